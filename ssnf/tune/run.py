"""The run loop: a sweep or a confirmation run (``ssnf.tune.plans``), on local Ray or an existing cluster;
resumable; Parquet results.

``run_sweep(options, spaces)`` builds the plan, which checks everything it can before anything is written (space,
data root, categories and their splits, the space's keys and values on a few samples, the storage, resume
state), starts Ray (``ssnf.tune.connect``: the resources and storage the cluster can grant), then runs each
category: its data prepared once per extractor setting (decoded images, frozen-backbone features, validation
set) and shared with every trial through Ray's object store, at most ``max_concurrent`` trials at a time,
failed workers retried from their last checkpoint, every ended trial written to Parquet by ``ParquetResults``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import ray
from ray import tune

from ssnf.config import to_dict
from ssnf.data.splits import Splits
from ssnf.errors import SSNFError
from ssnf.tune.connect import start_ray
from ssnf.tune.experiment import experiment_uri, read_trials
from ssnf.tune.options import SweepOptions, budget
from ssnf.tune.plans import Plan, make_plan
from ssnf.tune.report import CategoryOutcome, summarize, write_feature_stats
from ssnf.tune.results import ParquetResults
from ssnf.tune.search import BudgetStopper
from ssnf.tune.shared import start_store
from ssnf.tune.trainable import run_trial


class SweepInterrupted(SSNFError):
    """The sweep was stopped (Ctrl-C) before every trial ended; ``--resume`` continues it."""


def run_sweep(options: SweepOptions, spaces: Mapping[str, Callable]) -> list[CategoryOutcome]:
    """The sweep (one Optuna study per category) or, with ``options.confirm``, the confirmation run (each
    candidate x each new seed, as a grid)."""
    return run(make_plan(options, spaces))


def run(plan: Plan) -> list[CategoryOutcome]:
    """Every category of a checked plan, one after another; each one's trials and best."""
    start_ray(plan.options)
    uri = experiment_uri(plan.options)
    for category, (cfg, splits) in plan.categories.items():
        run_category(plan, uri, category, to_dict(cfg), splits)
    return summarize(uri, list(plan.categories))


def run_category(plan: Plan, uri: str, category: str, base: dict, splits: Splits) -> None:
    """One category: its feature store, its tuner (new or restored), the fit; raises where it ended short."""
    options = plan.options
    store = None
    if options.share_features:  # per extractor setting: features, validation and test set, extractor, once
        store = start_store(splits, threads=max(1, int(options.cpus_per_trial)))
        ray.get(store.get.remote(base, count=False))  # the base setting now: a data problem shows before any trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, store=store, private_cache=not options.share_features,
                             memory_gib=options.trial_memory, slots=options.max_concurrent,
                             confirming=plan.confirming(category), cost_budget=budget(options),
                             gpus=options.gpus_per_trial),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
    stopper = plan.stopper()
    tuner = make_tuner(plan, uri, category, base, trainable, stopper)
    try:
        tuner.fit()
    finally:  # also after Ctrl-C: what the feature sets cost so far
        if store is not None:
            write_feature_stats(uri, category, ray.get(store.stats.remote()), options.verbose)
            ray.kill(store)  # its feature sets leave the object store before the next category's
    if stopper is not None and stopper.gave_up:
        raise SSNFError(stopper.message(budget(options), options.space))
    expected = plan.trials(category)
    ended = read_trials(uri)
    ended = ended[ended["category"] == category]["trial_id"].nunique() if len(ended) else 0
    if ended < expected:  # Ray Tune returns normally after Ctrl-C / SIGUSR1
        raise SweepInterrupted(f"the sweep stopped with {ended} of {expected} trials of {category} ended; "
                               f"continue with --name {options.name} --resume")
    plan.end(uri, category)


def make_tuner(plan: Plan, uri: str, category: str, base: dict, trainable,
               stopper: BudgetStopper | None) -> tune.Tuner:
    """The category's experiment restored (``--resume`` where Tune can), else a new one from the plan's search."""
    options = plan.options
    path = f"{uri}/{category}"
    resume = options.resume and tune.Tuner.can_restore(path)
    on_end = plan.begin(uri, category, resume)
    if resume:
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    callback = ParquetResults(f"{uri}/results", options.name, category, base, options.cpus_per_trial,
                              options.gpus_per_trial, space=plan.space, space_name=plan.space_name,
                              confirming=plan.confirming(category), on_end=on_end)
    tune_config, param_space = plan.search(uri, category)
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config,
        run_config=tune.RunConfig(
            name=category, storage_path=uri, verbose=options.verbose,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[callback], stop=stopper,
        ),
    )


__all__ = ["SweepInterrupted", "make_tuner", "run", "run_category", "run_sweep"]
