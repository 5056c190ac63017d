"""What mattered: parameter importance per category, from the Parquet rows alone.

Each sweep row keeps the Optuna parameters it was sampled with and their distributions (the ``params``
column, written by replaying the search space), so the trials are rebuilt into an in-memory Optuna study
and handed to Optuna's importance evaluators (PED-ANOVA and fANOVA).

Conditional parameters: a parameter that only some trials have (a block's kind that exists only in
deeper stacks, a margin only some loss forms use) is dropped silently by Optuna, which only looks at the
parameters every trial shares. Here each one is made explicit: a categorical one gets the extra choice
``"(absent)"``; a numeric one a value just below its range (its distribution widened by one step) in
the trials that lack it. Its importance then says how much "whether and what" mattered together; the
table says in how many trials it was present.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import pandas as pd

from ssnf.results import Results, ResultsError

ABSENT = "(absent)"
EVALUATORS = ("ped_anova", "fanova")


def _values(trials: pd.DataFrame, epochs: pd.DataFrame | None, at: str | int) -> pd.DataFrame:
    """The objective of each trial: its final val_score (full-budget trials) or its val_score at epoch ``at``
    (every trial that reached that epoch: ASHA's stopped trials count too)."""
    from analysis.selection import full_budget

    if at == "final":
        rows = full_budget(trials)
        return rows.assign(value=rows["final_val_score"])
    epoch = int(at)
    if epochs is None:
        raise ResultsError("importance at an epoch needs the epochs table")
    scores = epochs[epochs["epoch"] == epoch][["trial_id", "experiment", "val_score"]]
    rows = trials.merge(scores, on=["trial_id", "experiment"])
    rows = rows[rows["val_score"].notna() & rows["status"].ne("diverged")]
    return rows.assign(value=rows["val_score"])


def rebuild_study(trials: pd.DataFrame, epochs: pd.DataFrame | None = None, at: str | int = "final",
                  explicit_conditionals: bool = True):
    """An in-memory Optuna study (maximize) of one category's sweep rows, with conditional parameters made
    explicit (see the module docstring). Returns ``(study, presence)``: presence = {param: trials with it}."""
    import optuna
    from optuna.distributions import (CategoricalDistribution, FloatDistribution, IntDistribution,
                                      json_to_distribution)

    from analysis.selection import sweep_rows

    rows = _values(sweep_rows(trials), epochs, at)
    rows = rows[rows["params"].notna()]
    parsed = [{k: (v["value"], json_to_distribution(v["distribution"])) for k, v in json.loads(p).items()}
              for p in rows["params"]]
    presence: dict[str, int] = {}
    dists: dict = {}
    for params, trial_id in zip(parsed, rows["trial_id"]):
        for name, (_, d) in params.items():
            presence[name] = presence.get(name, 0) + 1
            if dists.setdefault(name, d) != d:  # two spaces (or versions of one) in the same table
                spaces = ", ".join(sorted(set(rows["space"].dropna())))
                raise ResultsError(f"parameter {name} has two distributions in these trials ({dists[name]} and, in trial "
                                   f"{trial_id}, {d}; spaces: {spaces}): analyse one search space at a time")
    n = len(parsed)
    widened = {}
    for name, d in dists.items():
        if presence[name] == n or not explicit_conditionals:
            continue
        if isinstance(d, CategoricalDistribution):
            widened[name] = (CategoricalDistribution(list(d.choices) + [ABSENT]), ABSENT)
        elif isinstance(d, IntDistribution):
            widened[name] = (IntDistribution(d.low - d.step, d.high, step=d.step), d.low - d.step)
        elif d.log:
            widened[name] = (FloatDistribution(d.low / 2, d.high, log=True), d.low / 2)
        else:
            gap = (d.high - d.low) / 10 if d.step is None else d.step
            widened[name] = (FloatDistribution(d.low - gap, d.high, step=d.step), d.low - gap)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for (_, row), params in zip(rows.iterrows(), parsed):
        values, distributions = {}, {}
        for name in dists:
            if name in widened:
                distributions[name], fill = widened[name]
                values[name] = params[name][0] if name in params else fill
            elif name in params:
                values[name], distributions[name] = params[name]
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions=distributions, value=float(row["value"]),
            user_attrs={"trial_id": row["trial_id"], "experiment": row["experiment"]}))
    return study, presence


def objective(trials: pd.DataFrame, epochs: pd.DataFrame, min_trials: int = 8) -> str | int:
    """``"final"`` where at least ``min_trials`` sweep trials trained the full budget, else the deepest epoch
    that ``min_trials`` trials reached (ASHA stops most trials early: their early scores still rank them);
    in a sweep smaller than that, the deepest epoch that the most trials reached."""
    from analysis.selection import full_budget, sweep_rows

    sweep = sweep_rows(trials)
    full = len(full_budget(sweep))
    if full >= min_trials:
        return "final"
    reached = sweep[sweep["status"] != "diverged"]["epochs_run"]
    counts = {int(e): int((reached >= e).sum()) for e in set(reached) if e > 0}
    enough = [e for e, n in counts.items() if n >= min_trials]
    if enough:
        return max(enough)
    most = max(counts.values(), default=0)
    if full >= most:
        return "final"
    return max(e for e, n in counts.items() if n == most)


def importances(trials: pd.DataFrame, epochs: pd.DataFrame | None = None, at: str | int = "final",
                seed: int = 0, min_trials: int = 4) -> pd.DataFrame:
    """One category's parameter importances: a row per parameter, PED-ANOVA and fANOVA (each normalised to
    sum 1 by Optuna), how many trials had it, and whether it is conditional."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    category = ", ".join(sorted(set(trials["category"])))
    study, presence = rebuild_study(trials, epochs, at)
    n = len(study.trials)
    if n < min_trials:
        raise ResultsError(f"category {category}: {n} trials with a validation score at {at!r}, importance needs "
                           f"{min_trials} at least (run more trials, or --at an earlier epoch)")
    params = sorted(presence)
    table = pd.DataFrame({"param": params, "present": [presence[p] for p in params], "trials": n,
                          "conditional": [presence[p] < n for p in params]})
    evaluators = {"ped_anova": PedAnovaImportanceEvaluator(), "fanova": FanovaImportanceEvaluator(seed=seed)}
    for name, evaluator in evaluators.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature notices
            got = get_param_importances(study, evaluator=evaluator, params=params, normalize=True)
        table[name] = [float(got.get(p, 0.0)) for p in params]
    table.insert(0, "category", category)
    return table.sort_values("fanova", ascending=False, ignore_index=True)


@dataclass
class CategoryImportance:
    """One category's importances, at the objective chosen for it; ``table`` is None where too few trials had
    a score there, and ``note`` says so."""

    category: str
    at: str | int  # "final" or an epoch
    table: pd.DataFrame | None
    note: str = ""

    @property
    def objective(self) -> str:
        return "final val_score of full-budget trials" if self.at == "final" else f"val_score at epoch {self.at}"


def by_category(results: Results, categories: list[str] | None = None,
                at: str | int = "auto") -> list[CategoryImportance]:
    """``importances`` for each category (default: every one, in the order of the results) at ``at``:
    ``"auto"`` (``objective`` per category), ``"final"`` or an epoch. A category with too few trials gets
    its reason instead of a table, and the others go on; a category not in the results is an error."""
    present = list(dict.fromkeys(results.trials["category"]))
    missing = [c for c in categories or [] if c not in present]
    if missing:
        raise ResultsError(f"category {missing[0]} is not in the results (they have {', '.join(sorted(present))})")
    found = []
    for category in categories or present:
        part = results.category(category)
        chosen = objective(part.trials, part.epochs) if at == "auto" else at
        chosen = chosen if chosen == "final" else int(chosen)
        try:
            found.append(CategoryImportance(category, chosen, importances(part.trials, part.epochs, at=chosen)))
        except ResultsError as exc:
            found.append(CategoryImportance(category, chosen, None, str(exc)))
    return found


def markdown(table: pd.DataFrame) -> str:
    lines = ["| category | parameter | fANOVA | PED-ANOVA | present in |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        cond = " (conditional)" if r["conditional"] else ""
        lines.append(f"| {r['category']} | {r['param']}{cond} | {_pct(r['fanova'])} | {_pct(r['ped_anova'])} | "
                     f"{r['present']}/{r['trials']} |")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f} %"
