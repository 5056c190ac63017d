"""What a sweep or a confirmation run is asked to do: ``SweepOptions``, the checks every run shares, and the
command-line flags derived from the dataclass (``add_flags`` / ``given``).

Every option is spelled once, as a field: its type (a ``Literal`` holds the choices), its default and, in
``field(metadata=flag(...))``, its help text and, for a flag that turns a default-on option off, its name.
``tune_main.py`` builds its parser from the fields, so the command line cannot disagree with the library.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Mapping, get_type_hints

from ssnf.errors import SSNFError
from ssnf.flags import value_kwargs
from ssnf.tune.search import BUDGETS, OBJECTIVES, SCHEDULERS, SEARCHERS, Scheduler, Searcher, parse_objectives


def flag(help: str, name: str | None = None, metavar: str | None = None) -> dict:
    """A field's command-line flag: its help text; ``name`` for a flag not spelled ``--<field-name>`` (a
    default-on option's ``--no-...``); ``metavar`` for its value."""
    return {"help": help, "flag": name, "metavar": metavar}


_COSTS = ", ".join(o for o in OBJECTIVES if o != "val_score")


@dataclass
class SweepOptions:
    data_root: str | None = field(metadata=flag("dataset root"))
    categories: list[str] = field(metadata=flag("comma-separated categories, one study each"))
    space: str = field(default="smoke", metadata=flag("search space name (search_spaces/)"))
    num_samples: int = field(default=8, metadata=flag("trials per category"))
    max_epochs: int = field(default=6, metadata=flag("epochs of a full-budget trial"))
    cpus_per_trial: float = field(default=1.0, metadata=flag("CPUs of a trial"))
    gpus_per_trial: float = field(default=0.0, metadata=flag("GPUs of a trial, fractional, e.g. 0.25"))
    max_concurrent: int = field(default=2, metadata=flag("trials at a time"))
    storage: str = field(default="ray_results", metadata=flag("local folder or cloud URI (s3://, gs://)"))
    name: str = field(default="ssnf", metadata=flag("experiment name: its folder under --storage; needed for --resume"))
    resume: bool = field(default=False, metadata=flag("continue the experiment --name"))
    address: str | None = field(default=None, metadata=flag(
        "an existing Ray cluster (e.g. auto); default: private local Ray"))
    seed: int = field(default=0, metadata=flag("seed of the searcher and of every trial"))
    searcher: Searcher = field(default="tpe", metadata=flag("Optuna TPE, or random search"))
    scheduler: Scheduler = field(default="asha", metadata=flag("ASHA over epochs, or none: every trial trains fully"))
    base: dict = field(default_factory=dict)  # nested config values every trial starts from (--config, --set)
    share_features: bool = field(default=True, metadata=flag(
        "every trial extracts its own features (for measuring what sharing saves)", "--no-shared-features"))
    baseline: bool = field(default=True, metadata=flag(
        "do not run the space's baseline (ssnf's default config) as the first trial", "--no-baseline"))
    shared_storage: bool = field(default=False, metadata=flag(
        "the local --storage folder is mounted at the same path on every node of the cluster"))
    trial_niceness: int = field(default=0, metadata=flag(
        "CPU priority of the trials (0: like any other job on the node; Ray's own default is 15)"))
    trial_memory: float = field(default=0.0, metadata=flag(
        "memory a trial may allocate; a trial that needs more ends as an error and the sweep goes on "
        "(0: 60 % of its node's memory over --max-concurrent)", metavar="GIB"))
    confirm: str | None = field(default=None, metadata=flag(
        "instead of a search: re-train every candidate of this Parquet (`python -m analysis select ... --out DIR` "
        "writes DIR/candidates.parquet) with --seeds new seeds, full budget", metavar="CANDIDATES"))
    objectives: str = field(default="val_score", metadata=flag(
        f"comma-separated: val_score and up to two costs ({_COSTS}); several give one Pareto front per category"))
    max_ms: float = field(default=0.0, metadata=flag(
        "a trial whose detector takes longer per image at batch 1 (measured on its node before training) ends at "
        "once as infeasible (0: no bound)", metavar="MS"))
    max_gflops: float = field(default=0.0, metadata=flag("likewise for GFLOP per image (0: no bound)", metavar="GFLOP"))
    reuse_actors: bool = field(default=True, metadata=flag(
        "a fresh worker process for every trial (Ray Tune's default; by default a trial's worker runs the next trial "
        "and skips re-importing torch and the library)", "--no-reuse-actors"))
    seeds: int = field(default=3, metadata=flag("--confirm: new seeds per candidate"))
    verbose: int = 1  # Ray Tune's progress output (0: none)


def add_flags(parser: argparse.ArgumentParser, defaults: Mapping[str, str] | None = None) -> None:
    """One flag per ``SweepOptions`` field with a help text, its type, choices and default read from the field.
    Every flag's own default is None ("not given": ``given``); ``defaults``: the default to show where the
    entry point fills a field otherwise (the demo's values, a generated name)."""
    hints = get_type_hints(SweepOptions)
    for f in fields(SweepOptions):
        if "help" not in f.metadata:
            continue
        shown = (defaults or {}).get(f.name, _default_text(f))
        text = f.metadata["help"] + (f" (default: {shown})" if shown else "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": text.replace("%", "%%")}
        hint = hints[f.name]
        if hint is bool:
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            kwargs.update(value_kwargs(hint), metavar=f.metadata.get("metavar"))
        parser.add_argument(f.metadata.get("flag") or "--" + f.name.replace("_", "-"), **kwargs)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SweepOptions`` fields whose flag was on the command line (``add_flags``), with their values."""
    return {f.name: getattr(args, f.name) for f in fields(SweepOptions)
            if "help" in f.metadata and getattr(args, f.name, None) is not None}


def _default_text(f: Field) -> str:
    if f.default is MISSING or f.default is None or isinstance(f.default, bool):
        return ""
    return f"{f.default:g}" if isinstance(f.default, float) else str(f.default)


def check_run_options(options: SweepOptions) -> None:
    """The checks a sweep and a confirmation run share (counts, priority, resources, budgets)."""
    for name, value in (("num-samples", options.num_samples), ("max-epochs", options.max_epochs),
                        ("max-concurrent", options.max_concurrent), ("seeds", options.seeds)):
        if value < 1:
            raise SSNFError(f"--{name}={value} must be at least 1")
    if not 0 <= options.trial_niceness <= 19:
        raise SSNFError(f"--trial-niceness={options.trial_niceness} must be between 0 and 19")
    if options.trial_memory < 0:
        raise SSNFError(f"--trial-memory={options.trial_memory} must be 0 (automatic) or a size in GiB")
    if options.cpus_per_trial <= 0 or options.gpus_per_trial < 0:
        raise SSNFError("--cpus-per-trial must be positive and --gpus-per-trial not negative")
    for name in BUDGETS:
        if getattr(options, name) < 0:
            raise SSNFError(f"--{name.replace('_', '-')}={getattr(options, name):g} must be 0 (no bound) or positive")


def check_search_options(options: SweepOptions, spaces: Mapping[str, Any]) -> None:
    """A search's own options: a known space, searcher and scheduler, objectives it can optimise."""
    if options.space not in spaces:
        raise SSNFError(f"unknown search space {options.space!r}; known: {', '.join(sorted(spaces))}")
    if options.searcher not in SEARCHERS or options.scheduler not in SCHEDULERS:
        raise SSNFError(f"--searcher must be one of {SEARCHERS} and --scheduler one of {SCHEDULERS}")
    check_run_options(options)
    parse_objectives(options.objectives)


def budget(options: SweepOptions) -> dict[str, float]:
    """The sweep's cost bounds that are set (``ssnf.tune.search.BUDGETS`` option -> limit)."""
    return {name: float(getattr(options, name)) for name in BUDGETS if getattr(options, name) > 0}


def trial_device(options: SweepOptions) -> str:
    """``train.device`` of every trial: a trial with a GPU share trains on it; ``train.device=cpu`` set on
    purpose is kept."""
    device = options.base.get("train", {}).get("device", "auto")
    if options.gpus_per_trial > 0:
        return "cpu" if device == "cpu" else "cuda"
    return "cpu"


__all__ = ["SweepOptions", "add_flags", "budget", "check_run_options", "check_search_options", "flag", "given",
           "trial_device"]
