"""The sweep's searcher and scheduler: Optuna through Ray Tune, one or several objectives, a cost budget.

Objectives (``--objectives``): ``val_score`` (maximised) and any of the deployment costs every trial measures
before its first epoch (``ssnf.cost``; minimised): ``infer_ms`` (ms per image at batch 1), ``infer_ms_b32``,
``gflops``, ``params``. One objective: Optuna TPE as before. Several: Optuna's multi-objective TPE through
``OptunaSearch`` (a metric list), whose study keeps a Pareto front per category.

A budget (``--max-ms`` on batch-1 ms per image, ``--max-gflops``) is an Optuna *constraint*, not a fake score:
a trial over it ends before its first epoch (``infeasible``), and ``CostAwareSearch`` tells Optuna the trial's
measured violation (``cost / budget - 1``, positive: infeasible) as a user attribute that the sampler's
``constraints_func`` (``cost_constraints``) reads; TPE then ranks infeasible trials below every feasible one,
by how far over they were, and proposes fewer like them.

ASHA with several objectives: ASHA promotes on ``val_score`` alone (a trial's cost is known, and fixed,
before it trains, so there is nothing about cost to learn from its epochs). Ray reports a trial that ASHA
stopped to the searcher as *complete*, with its last, early ``val_score`` (``OptunaSearch.on_trial_complete``);
in a multi-objective study that would put a half-trained trial on the Pareto front. ``CostAwareSearch`` tells
Optuna such a trial (fewer epochs than the budget) as ``PRUNED`` instead, with one objective or several: the
front holds full-budget trials only, and TPE still learns from the stopped ones as pruned trials.

A budget no config of the space meets: ``BudgetStopper`` ends the sweep after ``GIVE_UP_AFTER`` trials in a row
were infeasible with none feasible before, and the sweep says so in one line with the cheapest cost seen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Literal, get_args

from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ssnf.cost import COST_FIELDS
from ssnf.errors import SSNFError

logger = logging.getLogger(__name__)

# objective name -> (the result key the trial reports, Optuna's direction)
OBJECTIVES = {"val_score": ("val_score", "max"), "infer_ms": ("cost_infer_ms_b1", "min"),
              "infer_ms_b32": ("cost_infer_ms_b32", "min"), "gflops": ("cost_gflops", "min"),
              "params": ("cost_params", "min")}
BUDGETS = {"max_ms": "cost_infer_ms_b1", "max_gflops": "cost_gflops"}  # option -> the cost it bounds
VIOLATION_ATTR = "cost_violation"  # the Optuna user attribute ``cost_constraints`` reads
INFEASIBLE_KEY = "infeasible"  # in a trial's result: it was over the budget and did not train
GIVE_UP_AFTER = 6  # infeasible trials in a row, none feasible yet: the budget is out of the space's reach
Searcher = Literal["tpe", "random"]  # --searcher: Optuna TPE, or random search (the baseline)
Scheduler = Literal["asha", "none"]  # --scheduler: ASHA over epochs, or every trial trains its full budget
SEARCHERS: tuple[str, ...] = get_args(Searcher)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)


def parse_objectives(spelling: str) -> list[str]:
    """``"val_score,infer_ms"`` -> the objective names, checked (one line names an unknown one)."""
    names = [n.strip() for n in spelling.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise SSNFError(f"--objectives: unknown objective {unknown[0]!r}; known: {', '.join(OBJECTIVES)}")
    if not names or len(set(names)) != len(names) or len(names) > 3:
        raise SSNFError(f"--objectives {spelling!r}: name one to three distinct objectives, e.g. val_score,infer_ms")
    if "val_score" not in names:
        raise SSNFError(f"--objectives {spelling!r}: val_score must be one of them (a cost alone picks an untrained "
                        "detector)")
    return names


def budget_violation(result: dict, budget: dict[str, float]) -> float:
    """The largest ``cost / limit - 1`` over the budget's costs (``BUDGETS`` option -> limit): > 0 over it."""
    worst = float("-inf")
    for option, limit in budget.items():
        value = result.get(BUDGETS[option])
        if value is not None and limit > 0:
            worst = max(worst, float(value) / limit - 1.0)
    return worst if worst != float("-inf") else 0.0


def cost_constraints(trial) -> list[float]:
    """Optuna's ``constraints_func``: the violation ``CostAwareSearch`` recorded (<= 0: within the budget)."""
    return [float(trial.user_attrs.get(VIOLATION_ATTR, 0.0))]


class CostAwareSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna what a trial's end means: a trial stopped early by the scheduler
    (fewer than ``budget_epochs`` epochs) is ``PRUNED``, not complete; an infeasible one is ``PRUNED`` with its
    budget violation; a complete one carries its violation too (see the module docstring)."""

    def __init__(self, *args, budget_epochs: int, budget: dict[str, float] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.budget_epochs = budget_epochs
        self.budget = dict(budget or {})

    def _told(self, ot_trial) -> bool:
        return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials and self._told(ot_trial):
            return None  # re-run after a resume (see on_trial_complete): its study trial has ended
        return super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or error or not result:
            return super().on_trial_complete(trial_id, result, error)
        from optuna.trial import TrialState

        if self._told(ot_trial):
            # a trial that ended just before the driver was stopped, after Ray's last snapshot: resumed, Ray runs
            # it to its end again, but the study was told already (the journal is written at once)
            logger.warning("trial %s: its Optuna trial ended before the sweep was resumed; told once", trial_id)
            self._completed_trials.add(trial_id)
            return None
        costs = {k: result[k] for k in (f"cost_{f}" for f in COST_FIELDS) if result.get(k) is not None}
        if costs:
            ot_trial.set_user_attr("cost", costs)
        if self.budget:
            ot_trial.set_user_attr(VIOLATION_ATTR, budget_violation(result, self.budget))
        early = int(result.get("training_iteration", 0)) < self.budget_epochs or result.get(INFEASIBLE_KEY)
        if not early or result.get("diverged") or result.get("out_of_memory"):
            return super().on_trial_complete(trial_id, result, error)  # complete; or NaN: failed, as before
        self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


@dataclass
class BudgetStopper(Stopper):
    """Ends the sweep when ``give_up_after`` trials in a row were infeasible and none was feasible: the budget is
    out of the space's reach. ``cheapest``: the lowest cost seen of each bounded quantity."""

    give_up_after: int = GIVE_UP_AFTER
    infeasible: set = field(default_factory=set)  # trial ids
    feasible: set = field(default_factory=set)
    cheapest: dict = field(default_factory=dict)
    gave_up: bool = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        for key in BUDGETS.values():
            if result.get(key) is not None:
                self.cheapest[key] = min(self.cheapest.get(key, float("inf")), float(result[key]))
        if result.get(INFEASIBLE_KEY):
            self.infeasible.add(trial_id)
        else:  # a feasible trial's epoch
            self.feasible.add(trial_id)
        self.gave_up = self.gave_up or (not self.feasible and len(self.infeasible) >= self.give_up_after)
        return False

    def stop_all(self) -> bool:
        return self.gave_up

    def message(self, budget: dict[str, float], space: str) -> str:
        cheapest = ", ".join(f"{self.cheapest[v]:.3g} {'ms/image' if 'ms' in v else 'GFLOP/image'}"
                             for k, v in BUDGETS.items() if k in budget and v in self.cheapest)
        limits = " and ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in budget.items())
        return (f"no config of space {space!r} met {limits} in the first {len(self.infeasible)} trials (the cheapest "
                f"measured {cheapest or 'nothing'}): raise the budget or search a cheaper space (e.g. --space cost)")


def sampler(searcher: Searcher, seed: int, num_samples: int, constrained: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    constraints = cost_constraints if constrained else None
    if searcher == "tpe":
        # Optuna's default of 10 random start-up trials would make a budget of 8 pure random search
        # (with the same draws as --searcher random); a third of the budget, 3 to 10, leaves TPE room to
        # model. constant_liar keeps concurrent trials from being proposed on top of each other.
        startup = min(10, max(3, num_samples // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True,
                                          constraints_func=constraints)
    return optuna.samplers.RandomSampler(seed=seed)


def searcher(space: Callable, category: str, storage, *, objectives: list[str], budget: dict[str, float],
             searcher_name: Searcher, seed: int, num_samples: int, max_concurrent: int, budget_epochs: int,
             baseline: dict | None) -> ConcurrencyLimiter:
    """The category's searcher: its Optuna study lives in ``storage`` (the experiment's journal: ``optuna-dashboard
    <file>`` shows the live sweep, and Ray's snapshot of the searcher reopens the same file on --resume);
    ``baseline`` (ssnf's default config's point) is trial 0, so every pick is measured against the default."""
    metrics = [OBJECTIVES[o][0] for o in objectives]
    modes = [OBJECTIVES[o][1] for o in objectives]
    search = CostAwareSearch(space=space, metric=metrics if len(metrics) > 1 else metrics[0],
                             mode=modes if len(modes) > 1 else modes[0],
                             sampler=sampler(searcher_name, seed, num_samples, bool(budget)), study_name=category,
                             storage=storage, points_to_evaluate=[dict(baseline)] if baseline else None,
                             budget_epochs=budget_epochs, budget=budget)
    return ConcurrencyLimiter(search, max_concurrent=max_concurrent)


def scheduler(name: Scheduler, max_epochs: int):
    """ASHA over epochs on ``val_score`` (also with several objectives: see the module docstring), or none."""
    if name == "none":
        return None
    return ASHAScheduler(time_attr="training_iteration", metric="val_score", mode="max", max_t=max_epochs,
                         grace_period=max(1, max_epochs // 4), reduction_factor=2)


__all__ = ["BUDGETS", "BudgetStopper", "CostAwareSearch", "GIVE_UP_AFTER", "INFEASIBLE_KEY", "OBJECTIVES",
           "SCHEDULERS", "SEARCHERS", "Scheduler", "Searcher", "budget_violation", "cost_constraints",
           "parse_objectives", "scheduler", "searcher"]
