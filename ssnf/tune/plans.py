"""The two kinds of run that one loop (``ssnf.tune.run``) drives, each checked whole before anything is written:

- ``SweepPlan``: a search, one Optuna study per category (TPE or random, the space's baseline as trial 0,
  ASHA or no scheduler, one objective or a Pareto front, a cost budget that may end it);
- ``ConfirmPlan`` (``--confirm candidates.parquet``): each category's chosen candidates re-trained with
  ``seeds`` new seeds (seeds none of them trained with), as a grid: same budget, data and backbone.

The contract the loop reads (``Plan``): ``options``; ``categories`` (category -> its base config and its checked
splits); ``space`` and ``space_name`` (replayed by the results callback for a trial's ``params``; None in a
confirmation); ``confirming(category)`` (candidate id -> experiment, trial id, dotted overrides; None in a
search); ``begin(uri, category, resume)`` (before the tuner; returns what the callback calls after each ended
trial, or None); ``search(uri, category)`` (a new tuner's ``TuneConfig`` and ``param_space``); ``stopper()``;
``trials(category)`` (the ended trials that complete it); ``end(uri, category)`` (once they have).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

import pandas as pd
from ray import tune

from ssnf.backbones.extractor import check_backbone
from ssnf.config import SSNFConfig, flatten, from_dict, merge, to_dict
from ssnf.data.layouts import load_index
from ssnf.data.splits import Splits, make_splits
from ssnf.errors import DataError, SSNFError
from ssnf.prepared import check_splits
from ssnf.results import CONFIG_PREFIX, row_config
from ssnf.tune.experiment import check_experiment
from ssnf.tune.journal import JournalSync, close_orphans, journal_uri, local_journal, storage
from ssnf.tune.options import SweepOptions, budget, check_run_options, check_search_options, trial_device
from ssnf.tune.overrides import CONFIRMS_KEY, EXTRACTOR_KEYS, SEED_KEY, check_space
from ssnf.tune.search import GIVE_UP_AFTER, BudgetStopper, parse_objectives, scheduler, searcher

Categories = dict[str, tuple[SSNFConfig, Splits]]  # category -> its base config, its checked splits


class Plan(Protocol):
    """What the run loop needs from a sweep or a confirmation run (see the module docstring)."""

    options: SweepOptions
    categories: Categories
    space: Callable | None
    space_name: str | None

    def confirming(self, category: str) -> dict | None: ...

    def begin(self, uri: str, category: str, resume: bool) -> Callable[[], None] | None: ...

    def search(self, uri: str, category: str) -> tuple[tune.TuneConfig, dict | None]: ...

    def stopper(self) -> BudgetStopper | None: ...

    def trials(self, category: str) -> int: ...

    def end(self, uri: str, category: str) -> None: ...


def make_plan(options: SweepOptions, spaces: Mapping[str, Callable]) -> Plan:
    """``options.confirm``: a confirmation run; else a search of ``spaces[options.space]``."""
    return ConfirmPlan(options) if options.confirm else SweepPlan(options, spaces)


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default spells the whole config into the name)."""
    return f"trial_{trial.trial_id}"


class SweepPlan:
    """A search: per category an Optuna study over ``num_samples`` trials (see the module docstring)."""

    def __init__(self, options: SweepOptions, spaces: Mapping[str, Callable]) -> None:
        check_search_options(options, spaces)
        self.options = options
        self.space: Callable | None = spaces[options.space]
        self.space_name: str | None = options.space
        self.categories = sweep_categories(options, self.space)
        check_experiment(options, options.categories)

    def confirming(self, category: str) -> dict | None:
        return None

    def begin(self, uri: str, category: str, resume: bool) -> Callable[[], None] | None:
        """On cloud storage Optuna writes a local copy of the study's journal: fetched back to resume, removed
        (an earlier experiment's) to start; returned to be uploaded after each ended trial."""
        if "://" not in uri:
            return None
        sync = JournalSync(str(local_journal(uri, category)), journal_uri(uri, category))
        if resume:
            sync.download()
        else:
            sync.fresh()
        return sync

    def search(self, uri: str, category: str) -> tuple[tune.TuneConfig, dict | None]:
        o = self.options
        baseline = getattr(self.space, "baseline", None) if o.baseline else None
        search = searcher(self.space, category, storage(local_journal(uri, category)),
                          objectives=parse_objectives(o.objectives), budget=budget(o), searcher_name=o.searcher,
                          seed=o.seed, num_samples=o.num_samples, max_concurrent=o.max_concurrent,
                          budget_epochs=o.max_epochs, baseline=baseline)
        return tune.TuneConfig(search_alg=search, scheduler=scheduler(o.scheduler, o.max_epochs),
                               num_samples=o.num_samples, trial_dirname_creator=trial_dirname,
                               reuse_actors=o.reuse_actors), None

    def stopper(self) -> BudgetStopper | None:
        """With a cost budget: ends the search when the budget is out of the space's reach."""
        return BudgetStopper(min(GIVE_UP_AFTER, self.options.num_samples)) if budget(self.options) else None

    def trials(self, category: str) -> int:
        return self.options.num_samples

    def end(self, uri: str, category: str) -> None:
        close_orphans(local_journal(uri, category), category)
        if "://" in uri:
            JournalSync(str(local_journal(uri, category)), journal_uri(uri, category))()


def sweep_categories(options: SweepOptions, space: Callable) -> Categories:
    """Each category's base config and splits, with the space's samples and every extractor setting it offers
    checked on it."""
    if not options.categories:
        raise SSNFError("no categories given: --categories a,b")
    root = Path(options.data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    out = {}
    for category in options.categories:
        tree = merge(options.base, {
            "data.root": str(root.resolve()), "data.category": category, "train.epochs": options.max_epochs,
            "train.seed": options.seed, "train.threads": max(1, int(options.cpus_per_trial)),
            "train.device": trial_device(options),
        })
        cfg = from_dict(SSNFConfig, tree)
        splits = make_splits(load_index(cfg.data), cfg.data)  # opens every image header and mask: once
        check_splits(cfg, splits)
        seen = check_space(space, to_dict(cfg), seed=options.seed)
        for backbone in {repr(c.backbone): c.backbone for c in [cfg, *seen]}.values():
            check_backbone(backbone)  # every extractor setting the space offers: weights present, strides known
        out[category] = (cfg, splits)
    return out


@dataclass
class Confirmation:
    """One category of a confirmation run: the candidates (id -> experiment, trial id, dotted overrides)
    and the new seeds each is trained with."""

    confirming: dict[str, tuple[str, str, dict]]
    seeds: list[int]

    @property
    def runs(self) -> int:
        return len(self.confirming) * len(self.seeds)


class ConfirmPlan:
    """A confirmation run: per category every candidate x every new seed, a grid, no early stopping."""

    space: Callable | None = None  # the candidates' rows carry their own params
    space_name: str | None = None

    def __init__(self, options: SweepOptions) -> None:
        if budget(options) or options.objectives != "val_score":
            raise SSNFError("--confirm re-trains chosen candidates with new seeds: --max-ms, --max-gflops and "
                            "--objectives belong to the sweep (select within a budget with `python -m analysis "
                            "select --max-ms`)")
        candidates = read_candidates(Path(options.confirm).expanduser())
        check_run_options(options)
        names = options.categories or list(dict.fromkeys(candidates["category"]))
        missing = [c for c in names if c not in set(candidates["category"])]
        if missing:
            raise SSNFError(f"--confirm {Path(options.confirm).expanduser()}: no candidate of {', '.join(missing)} "
                            f"(it has {', '.join(sorted(set(candidates['category'])))})")
        self.options = options
        self.categories: Categories = {}
        self.confirmations: dict[str, Confirmation] = {}
        for category in names:
            cfg, splits, self.confirmations[category] = confirm_category(
                options, category, candidates[candidates["category"] == category])
            self.categories[category] = (cfg, splits)
        check_experiment(options, names)

    def confirming(self, category: str) -> dict | None:
        return self.confirmations[category].confirming

    def begin(self, uri: str, category: str, resume: bool) -> Callable[[], None] | None:
        return None

    def search(self, uri: str, category: str) -> tuple[tune.TuneConfig, dict | None]:
        confirmation = self.confirmations[category]
        config = tune.TuneConfig(num_samples=1, max_concurrent_trials=self.options.max_concurrent,
                                 trial_dirname_creator=trial_dirname, reuse_actors=self.options.reuse_actors)
        return config, {CONFIRMS_KEY: tune.grid_search(sorted(confirmation.confirming)),
                        SEED_KEY: tune.grid_search(confirmation.seeds)}

    def stopper(self) -> BudgetStopper | None:
        return None

    def trials(self, category: str) -> int:
        return self.confirmations[category].runs

    def end(self, uri: str, category: str) -> None:
        return None


def read_candidates(file: Path) -> pd.DataFrame:
    """The candidates Parquet ``python -m analysis select ... --out DIR`` writes, refused in one line where it is
    missing, unreadable or lacks what a confirmation needs."""
    if not file.is_file():
        raise SSNFError(f"--confirm {file}: no such file (write it with `python -m analysis select ... --out DIR`)")
    try:
        candidates = pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise SSNFError(f"--confirm {file}: not a Parquet file ({str(exc).splitlines()[0]})") from None
    needed = {"experiment", "trial_id", "category", f"{CONFIG_PREFIX}train.seed"}
    if not needed <= set(candidates.columns) or not len(candidates):
        raise SSNFError(f"--confirm {file}: no candidate rows with {', '.join(sorted(needed))} "
                        "(write it with `python -m analysis select ... --out DIR`)")
    return candidates


def confirm_category(options: SweepOptions, category: str,
                     rows: pd.DataFrame) -> tuple[SSNFConfig, Splits, Confirmation]:
    """A category's base config and splits (its candidates' data, backbone weights, precision and budget, which
    must agree; each extractor setting is prepared once), the candidates' overrides and the new seeds."""
    trees = [row_config(row) for _, row in rows.iterrows()]
    searched = {k.split(".", 1)[1] for k in EXTRACTOR_KEYS}  # may differ: each setting is prepared once
    fixed = {(repr({k: v for k, v in t["data"].items() if k not in searched | {"root"}}),
              repr({k: v for k, v in t["backbone"].items() if k not in searched}),
              t["train"]["precision"], t["train"]["epochs"]) for t in trees}
    if len(fixed) > 1:
        raise SSNFError(f"--confirm {Path(options.confirm).expanduser()}: the candidates of {category} differ in "
                        "data, backbone weights, precision or budget; confirm them in separate runs")
    tree = trees[0]
    if options.data_root:
        tree["data"]["root"] = str(Path(options.data_root).expanduser().resolve())
    root = Path(tree["data"]["root"])
    if not root.is_dir():
        raise DataError(f"data root {root} (of the candidates of {category}) does not exist: pass --data-root")
    tree["train"].update(threads=max(1, int(options.cpus_per_trial)), device=trial_device(options))
    cfg = from_dict(SSNFConfig, tree)
    splits = make_splits(load_index(cfg.data), cfg.data)
    check_splits(cfg, splits)
    used = {int(t["train"]["seed"]) for t in trees}
    seeds = [s for s in range(options.seed, options.seed + options.seeds + len(used)) if s not in used][: options.seeds]
    keep = ("data.", "backbone.", "train.threads", "train.device", "train.seed")
    confirming = {}
    for (_, row), t in zip(rows.iterrows(), trees):
        overrides = {k: v for k, v in flatten(t).items() if not k.startswith(keep) or k in EXTRACTOR_KEYS}
        confirming[f"{row['experiment']}:{row['trial_id']}"] = (row["experiment"], row["trial_id"], overrides)
    return cfg, splits, Confirmation(confirming, seeds)


__all__ = ["ConfirmPlan", "Confirmation", "Plan", "SweepPlan", "confirm_category", "make_plan", "read_candidates",
           "sweep_categories", "trial_dirname"]
