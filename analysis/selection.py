"""Which detector to deploy, per category: the sweep's full-budget trials ranked by final validation
score, the top k re-trained with new seeds (``tune_main.py --confirm``), the best mean validation score
wins. Test metrics are carried along and reported, never used.

Why a confirmation: the sweep's best trial is the maximum of many noisy validation scores, so its own
score is biased upwards (the winner's curse) and a config can top the sweep on one lucky seed. Its
confirmation mean is over new seeds only (the sweep's seed is the one it was selected on), so the lucky
config can lose there.

The *baseline*: a space with a ``baseline`` point (``search_spaces/paper.py``: ssnf's default config) runs
it as the sweep's trial 0. ``select`` adds that trial to the candidates (whatever its rank, even if ASHA
stopped it), so the confirmation re-trains the default too and the pick is measured against it on the
same budget, seeds and validation set; the default can win.

Under a budget (``select --max-ms MS`` / ``--max-gflops``): a candidate is *eligible* when its detector's
measured cost (``cost_infer_ms_b1`` / ``cost_gflops``: the median over its sweep trial and its confirmation
runs, each measured before training on its own node) is within it. Only eligible trials are ranked and can
win; the baseline stays a candidate over the budget (it is what the pick is measured against) but cannot be
chosen. ``pareto_front`` marks the full-budget trials no other trial beats on both val_score and cost.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssnf.results import CONFIG_PREFIX, Results, ResultsError, full_budget, pareto_front, ranked, row_config

TESTS = ("test_image_auroc", "test_pixel_auroc", "test_aupro")
COSTS = ("cost_infer_ms_b1", "cost_infer_ms_b32", "cost_gflops", "cost_params")  # carried into the selection
BUDGET_COSTS = {"max_ms": "cost_infer_ms_b1", "max_gflops": "cost_gflops"}  # select's bound -> the cost it bounds
__all__ = ["Selection", "candidates", "confirmation_rows", "deployable", "full_budget", "optimism", "pareto_front",
           "ranked", "select", "summary", "sweep_rows", "within_budget", "write_selection"]


def within_budget(rows: pd.DataFrame, budget: dict[str, float]) -> pd.Series:
    """Per row: every bounded cost (``BUDGET_COSTS``) measured and within its limit (no budget: all True)."""
    ok = pd.Series(True, index=rows.index)
    for name, limit in budget.items():
        if limit and limit > 0:
            ok &= rows[BUDGET_COSTS[name]].le(limit).fillna(False)
    return ok


def sweep_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """The search trials (not confirmation runs)."""
    return trials[trials["confirms"].isna()]


def confirmation_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["confirms"].notna()]


def is_baseline(row: pd.Series) -> bool:
    """Whether a sweep trial ran its space's ``baseline`` point (its recorded parameters are exactly those)."""
    from search_spaces import SPACES  # Optuna-free: the spaces' registry and their baseline points only

    base = getattr(SPACES.get(row.get("space") or ""), "baseline", None)
    if not base or not isinstance(row.get("params"), str):
        return False
    params = {k: v["value"] for k, v in json.loads(row["params"]).items()}
    return params == base


def candidates(trials: pd.DataFrame, k: int | None = 3, categories: list[str] | None = None,
               budget: dict[str, float] | None = None) -> pd.DataFrame:
    """Per category, the ``k`` full-budget sweep trials with the highest final ``val_score`` (column ``rank``,
    1 = best; ties by trial id; ``k=None``: all of them), within ``budget`` where one is given. One line names a
    category that is missing or has no full-budget trial (within the budget)."""
    if k is not None and k < 1:
        raise ResultsError(f"--k={k} must be at least 1")
    sweep = sweep_rows(trials)
    if not len(sweep):
        raise ResultsError("no sweep trials in the results given (only confirmation runs)")
    present = list(dict.fromkeys(sweep["category"]))
    wanted = categories or present
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ResultsError(f"category {missing[0]} is not in the results (they have {', '.join(sorted(present))})")
    out = []
    for category in wanted:
        rows = sweep[sweep["category"] == category]
        full = full_budget(rows)
        if not len(full):
            counts = ", ".join(f"{n} {s}" for s, n in rows["status"].value_counts().items())
            raise ResultsError(f"category {category}: none of its {len(rows)} trials trained the full budget "
                               f"({counts}): run more trials or a larger budget")
        if budget:
            inside = full[within_budget(full, budget)]
            if not len(inside):
                col = BUDGET_COSTS[next(iter(budget))]
                raise ResultsError(f"category {category}: none of its {len(full)} full-budget trials is within "
                                   f"{_limits(budget)} (the cheapest: {full[col].min():.4g}): raise the budget or "
                                   "sweep a cheaper space (tune_main.py --space cost --max-ms ...)")
            full = inside
        top = ranked(full).copy()
        top.insert(0, "rank", range(1, len(top) + 1))
        out.append(top if k is None else top.head(k))
    return pd.concat(out, ignore_index=True)


@dataclass
class Selection:
    """Every candidate (``table``: one row each, ``chosen`` marks the pick of its category) and the chosen
    trials' full rows (``chosen``: the sweep rows, whose configs are deployed)."""

    table: pd.DataFrame
    chosen: pd.DataFrame
    candidates: pd.DataFrame


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _limits(budget: dict[str, float]) -> str:
    return " and ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in budget.items() if v)


def select(results: Results, k: int = 3, categories: list[str] | None = None, baseline: bool = True,
           budget: dict[str, float] | None = None) -> Selection:
    """Provisional pick (no confirmation runs of a category in ``results``: the sweep's best) or confirmed
    pick (the candidate with the best mean validation score over its confirmation seeds). ``baseline``: the
    sweep's baseline trial is a candidate too (rank 0 when it did not train the full budget, or is over the
    budget). ``budget``: ``{"max_ms": MS, "max_gflops": G}``; only candidates within it can win."""
    budget = {name: float(v) for name, v in (budget or {}).items() if v}
    unknown = sorted(set(budget) - set(BUDGET_COSTS))
    if unknown:
        raise ResultsError(f"unknown budget {unknown[0]!r}; known: {', '.join(BUDGET_COSTS)}")
    everyone = candidates(results.trials, None, categories, budget)  # every full-budget trial within it, ranked
    confirm = full_budget(confirmation_rows(results.trials))
    everyone = _with_baseline(results.trials, everyone, confirm) if baseline else everyone.assign(baseline=False)
    # one run per (candidate, seed): a second confirmation run with the same seeds is not counted twice
    confirm = confirm.sort_values("ended_at").drop_duplicates(["confirms_experiment", "confirms", "seed"], keep="last")
    cands = _candidates_of(everyone, confirm, k)
    table = pd.DataFrame([_candidate_row(c, confirm) for _, c in cands.iterrows()])
    _choose(table, budget)
    chosen_ids = table[table["chosen"]][["experiment", "trial_id"]]
    chosen = cands.merge(chosen_ids, on=["experiment", "trial_id"])
    return Selection(table, chosen, cands)


def _with_baseline(trials: pd.DataFrame, everyone: pd.DataFrame, confirm: pd.DataFrame) -> pd.DataFrame:
    """``everyone`` plus the default config's trial of each category (rank 0 when it is not a full-budget
    candidate: wherever ASHA left it), marked in a ``baseline`` column."""
    sweep = sweep_rows(trials)
    base = sweep[sweep.apply(is_baseline, axis=1)] if len(sweep) else sweep
    base = base[base["category"].isin(set(everyone["category"]))]
    # several sweeps of a category each ran the default: one of them stands for it, a confirmed one if any
    confirmed = set(zip(confirm["confirms_experiment"], confirm["confirms"]))
    base = base.assign(_confirmed=[(e, t) in confirmed for e, t in zip(base["experiment"], base["trial_id"])])
    base = base.sort_values(["_confirmed", "started_at"], ascending=[False, True]).drop_duplicates("category")
    base = base.drop(columns="_confirmed")
    extra = base[~base["trial_id"].isin(set(everyone["trial_id"]))].copy()
    extra.insert(0, "rank", 0)
    everyone = pd.concat([everyone, extra], ignore_index=True)
    everyone["baseline"] = everyone["trial_id"].isin(set(base["trial_id"]))
    return everyone


def _candidates_of(everyone: pd.DataFrame, confirm: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per category: the trials confirmed, where it has confirmation runs (whatever ``k`` is now); else the
    top ``k`` full-budget trials and the baseline wherever it stands."""
    confirmed = set(zip(confirm["confirms_experiment"], confirm["confirms"]))
    picked = []
    for _, group in everyone.groupby("category", sort=False):
        ids = list(zip(group["experiment"], group["trial_id"]))
        mine = [i for i in ids if i in confirmed]
        if mine:
            picked.append(group[[i in mine for i in ids]])
        else:
            top = group[group["rank"] >= 1].head(k)
            picked.append(pd.concat([top, group[group["baseline"] & ~group.index.isin(top.index)]]))
    return pd.concat(picked, ignore_index=True)


def _candidate_row(c: pd.Series, confirm: pd.DataFrame) -> dict:
    """One candidate's row of the selection table: its sweep figures, its confirmation seeds, its costs."""
    runs = confirm[(confirm["confirms"] == c["trial_id"]) & (confirm["confirms_experiment"] == c["experiment"])]
    runs = runs.sort_values("seed")
    scores = [float(v) for v in runs["final_val_score"]]
    row = {
        "category": c["category"], "rank": int(c["rank"]), "baseline": bool(c["baseline"]),
        "experiment": c["experiment"], "trial_id": c["trial_id"],
        "space": c["space"], "image_size": int(c["config.data.image_size"]), "epochs": int(c["budget_epochs"]),
        "sweep_seed": int(c["seed"]), "sweep_val_score": float(c["final_val_score"]), "sweep_status": c["status"],
        "seeds": [int(s) for s in runs["seed"]], "seed_val_scores": scores,
        "n_seeds": len(scores), "val_mean": float(np.mean(scores)) if scores else float("nan"),
        "val_std": _std(scores),
        **{f"sweep_{t}": c[t] for t in TESTS},
        **{f"seeds_{t}_mean": float(runs[t].mean()) if len(runs) else float("nan") for t in TESTS},
    }
    for col in COSTS:  # the median of its measurements: the sweep trial's and its confirmation runs'
        measured = pd.concat([pd.Series([c.get(col)]), runs[col]]).dropna().astype(float)
        row[col.removeprefix("cost_")] = float(measured.median()) if len(measured) else float("nan")
    return row


def _choose(table: pd.DataFrame, budget: dict[str, float]) -> None:
    """Fill ``eligible``, ``confirmed``, ``chosen`` and ``reason``: per category the best eligible mean over
    the confirmation seeds, or (provisional) the sweep's best eligible rank."""
    budget_view = table.rename(columns={c.removeprefix("cost_"): c for c in COSTS})
    table["eligible"] = within_budget(budget_view, budget).to_numpy() if budget else True
    table["confirmed"] = False
    table["chosen"] = False
    table["reason"] = ""
    for _, group in table.groupby("category", sort=False):
        confirmed = group["n_seeds"].gt(0).any()
        if confirmed:
            order = group.sort_values(["eligible", "val_mean", "rank"], ascending=[False, False, True], na_position="last")
        else:
            order = group.assign(_key=_stopped_last(group["rank"]) + np.where(group["eligible"], 0, np.inf))
            order = order.sort_values(["_key", "rank"])
        win = order.index[0]
        table.loc[group.index, "confirmed"] = bool(confirmed)
        table.loc[win, "chosen"] = True
        table.loc[group.index, "reason"] = [_reason(table.loc[i], order, confirmed, i == win, budget) for i in group.index]


def _stopped_last(rank: pd.Series) -> pd.Series:
    """Sort key: rank 0 (a baseline that did not train the full budget) after every full-budget rank."""
    return rank.where(rank > 0, np.inf)


def _fmt(mean: float, std: float, n: int) -> str:
    spread = f" ± {std:.4f}" if not math.isnan(std) else ""
    return f"{mean:.4f}{spread} over {n} new seed{'s' if n != 1 else ''}"


def _reason(row: pd.Series, order: pd.DataFrame, confirmed: bool, won: bool, budget: dict | None = None) -> str:
    text = _ranking_reason(row, order, confirmed, won)
    if budget:
        cost = f"{row['infer_ms_b1']:.1f} ms/image at batch 1, {row['gflops']:.2f} GFLOP"
        text += f"; {cost}" if row["eligible"] else f"; over {_limits(budget)} ({cost}): a reference, cannot be chosen"
    return text


def _ranking_reason(row: pd.Series, everyone: pd.DataFrame, confirmed: bool, won: bool) -> str:
    order = everyone[everyone["eligible"] | (everyone.index == row.name)]  # ranked among the eligible
    n_cand = len(order)
    if not confirmed:
        if row["baseline"] and row["rank"] == 0:
            why = ("over the sweep's cost budget, not trained there" if row["sweep_status"] == "infeasible"
                   else "stopped before the full budget")
            return f"the default config (the sweep's baseline trial, {why}): confirm it too"
        if won:
            return (f"provisional: best final val_score {row['sweep_val_score']:.4f} of the category's full-budget "
                    f"trials, one seed; not confirmed (tune_main.py --confirm candidates.parquet)")
        default = "; the default config (the sweep's baseline trial)" if row["baseline"] else ""
        return f"provisional: sweep rank {row['rank']} (val_score {row['sweep_val_score']:.4f}, one seed){default}"
    if row["n_seeds"] == 0:
        return "no completed confirmation run: cannot win"
    if won:
        text = f"confirmed: best mean val_score {_fmt(row['val_mean'], row['val_std'], row['n_seeds'])}"
        if n_cand > 1:
            second = order.iloc[1]
            if second["n_seeds"]:
                text += (f", ahead of {second['trial_id']} ({_fmt(second['val_mean'], second['val_std'], second['n_seeds'])})"
                         f" by {row['val_mean'] - second['val_mean']:.4f}")
                mine = dict(zip(row["seeds"], row["seed_val_scores"]))
                theirs = dict(zip(second["seeds"], second["seed_val_scores"]))
                shared = sorted(set(mine) & set(theirs))
                if shared:  # same seeds, same validation set: a paired look at the margin
                    wins = sum(mine[s] > theirs[s] for s in shared)
                    text += f", higher on {wins} of {len(shared)} shared seeds"
        if row["rank"] != 1:
            text += f"; rank {row['rank']} in the sweep (its single-seed score {row['sweep_val_score']:.4f})"
        base = everyone[everyone["baseline"] & (everyone.index != row.name) & (everyone["n_seeds"] > 0)]
        if row["baseline"]:
            text += "; this is the default config (the sweep's baseline trial)"
        elif len(base):
            b = base.iloc[0]
            text += f"; the default config (trial {b['trial_id']}): {_fmt(b['val_mean'], b['val_std'], b['n_seeds'])}"
            text += f", {row['val_mean'] - b['val_mean']:+.4f}"
            mine, theirs = dict(zip(row["seeds"], row["seed_val_scores"])), dict(zip(b["seeds"], b["seed_val_scores"]))
            shared = sorted(set(mine) & set(theirs))
            if shared:
                text += f", higher on {sum(mine[s] > theirs[s] for s in shared)} of {len(shared)} shared seeds"
        return text
    place = list(order.index).index(row.name) + 1
    return (f"confirmation place {place} of {n_cand}: mean val_score {_fmt(row['val_mean'], row['val_std'], row['n_seeds'])}"
            f" (sweep rank {row['rank']}, single-seed {row['sweep_val_score']:.4f})")


def deployable(row: pd.Series) -> dict:
    """The chosen trial's config as ``ssnf train`` should run it: everything the trial trained with, except
    where it ran (``train.threads``, ``train.device``: the sweep's per-trial share, back to automatic)."""
    from ssnf.config import SSNFConfig, from_dict, to_dict

    tree = to_dict(from_dict(SSNFConfig, row_config(row)))  # checked: it loads as a config
    tree["train"].update(threads=0, device="auto")
    return tree


def write_selection(selection: Selection, out: str | Path) -> list[Path]:
    """``out/<category>.yaml`` (the chosen config, as ``ssnf train --config`` reads it), ``out/selection.parquet``
    (every candidate) and ``out/candidates.parquet`` (the candidates' sweep rows: ``tune_main.py --confirm``)."""
    import yaml

    from ssnf.files import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for _, row in selection.chosen.iterrows():
        info = selection.table[(selection.table["trial_id"] == row["trial_id"])
                               & (selection.table["experiment"] == row["experiment"])].iloc[0]
        tree = deployable(row)
        head = (f"# ssnf config for {row['category']}, chosen by `python -m analysis select`: trial {row['trial_id']} of "
                f"experiment {row['experiment']}\n# {info['reason']}\n# train.threads and train.device are this machine's "
                f"choice (auto), not the sweep trial's\n# train it: ssnf train --config {row['category']}.yaml --out "
                f"models/{row['category']}\n# (every category of this folder: make models BEST=<this folder>)\n")
        path = out / f"{row['category']}.yaml"
        with atomic_path(path) as tmp:
            tmp.write_text(head + yaml.safe_dump(tree, sort_keys=False))
        written.append(path)
    config_cols = [c for c in selection.candidates.columns if c.startswith(CONFIG_PREFIX)]
    table = selection.table.merge(selection.candidates[["experiment", "trial_id"] + config_cols],
                                  on=["experiment", "trial_id"])
    for name, frame in (("selection.parquet", table), ("candidates.parquet", selection.candidates)):
        with atomic_path(out / name) as tmp:
            frame.to_parquet(tmp, index=False)
        written.append(out / name)
    return written


def optimism(table: pd.DataFrame) -> pd.DataFrame:
    """How far each candidate's sweep score sat above its new seeds' mean (``optimism``; NaN where it was
    not confirmed): a candidate far above won the sweep on a lucky seed (the winner's curse)."""
    out = table.assign(optimism=table["sweep_val_score"] - table["val_mean"])
    return out[["category", "rank", "trial_id", "sweep_val_score", "val_mean", "val_std", "optimism", "chosen"]]


def summary(selection: Selection) -> str:
    """A Markdown table of every candidate: sweep score, seeds' mean ± std, test (reported), the pick."""
    t = selection.table
    lines = ["| category | pick | sweep rank | trial | sweep val_score | new seeds | val mean ± std | "
             "test image AUROC (sweep / seeds' mean) | test pixel AUROC | test AUPRO | ms/image (batch 1) | why |",
             "|---" * 12 + "|"]
    for _, r in t.iterrows():
        std = "" if math.isnan(r["val_std"]) else f" ± {r['val_std']:.4f}"
        mean = "n/a" if math.isnan(r["val_mean"]) else f"{r['val_mean']:.4f}{std}"
        seeds = ",".join(str(s) for s in r["seeds"]) or "-"
        lines.append(
            f"| {r['category']} | {'**chosen**' if r['chosen'] else ''}{' (confirmed)' if r['chosen'] and r['confirmed'] else ''}"
            f"{' default' if r['baseline'] else ''} | {r['rank'] or r.get('sweep_status', 'stopped')} | {r['trial_id']} | {r['sweep_val_score']:.4f} | {seeds} | {mean} | "
            f"{_num(r['sweep_test_image_auroc'])} / {_num(r['seeds_test_image_auroc_mean'])} | "
            f"{_num(r['sweep_test_pixel_auroc'])} / {_num(r['seeds_test_pixel_auroc_mean'])} | "
            f"{_num(r['sweep_test_aupro'])} / {_num(r['seeds_test_aupro_mean'])} | {_num(r['infer_ms_b1'], 1)} | "
            f"{r['reason']} |")
    return "\n".join(lines)


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"
