"""Sweep results written without Ray: the real Parquet writer (``ssnf.results``) fed with trials sampled
from a real search space, so ``analysis`` is tested on the files a sweep writes, in seconds.

``write_sweep`` makes one experiment: per category ``n`` trials of the ``smoke`` space (conditional
parameters included), ASHA-like statuses (most trials stopped after one epoch), a diverged one, and a
validation score that depends on the learning rate plus noise; the test metrics follow the validation
score loosely. ``write_confirmation`` adds a confirmation run of given candidates with given scores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from search_spaces import SPACES
from ssnf.config import SSNFConfig, merge, to_dict
from ssnf.results import trial_rows, write_trial
from ssnf.tune.overrides import replay_space, trial_config

BASE = {"data.image_size": 64, "data.root": "/nonexistent/data", "train.epochs": 3, "backbone.pretrained": False}


def fake_cost(cfg) -> dict:
    """A deterministic stand-in for ``ssnf.cost``'s measurement: grows with the flows' couplings and width."""
    work = cfg.model.couplings * cfg.model.hidden
    return {"cost_params": 1000 * work, "cost_bank_entries": 0, "cost_gflops": work / 100.0,
            "cost_infer_ms_b1": 2.0 + work / 8.0, "cost_infer_ms_b32": 1.0 + work / 16.0, "cost_threads": 1}


def _row(experiment, category, trial_id, cfg, history, status, test=None, **extra):
    now = time.time()
    last = {**{f"test_{k}": v for k, v in (test or {}).items()}, **fake_cost(cfg)}
    row, epochs = trial_rows(experiment=experiment, category=category, trial_id=trial_id, status=status,
                             failure="loss became nan" if status == "diverged" else None, cfg=cfg, history=history,
                             last_result=last, started=now - 10, ended=now, cpus=1.0, gpus=0.0, **extra)
    return row, epochs


def write_sweep(store: Path, experiment: str = "sweep", categories=("washer", "weave"), n: int = 12,
                seed: int = 0, epochs: int = 3, space_name: str = "smoke", stopped: tuple[int, ...] = ()) -> Path:
    """``space_name`` with a ``baseline`` point: trial 0 runs it (as the sweep enqueues it); ``stopped``:
    trial numbers ASHA stops after one epoch whatever their number says."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(seed)
    space = SPACES.lookup(space_name)
    results = store / experiment / "results"
    for c, category in enumerate(categories):
        base = merge(to_dict(SSNFConfig()), {**BASE, "data.category": category, "train.epochs": epochs})
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed + c))
        if getattr(space, "baseline", None):
            study.enqueue_trial(space.baseline)
        for i in range(n):
            trial = study.ask()
            derived = space(trial) or {}
            sample = {**trial.params, **derived}
            cfg = trial_config(base, sample)
            quality = 0.9 - 0.2 * abs(np.log10(cfg.train.lr) - np.log10(1e-3)) + rng.normal(0, 0.01)
            status = "diverged" if i == 1 else ("completed" if i % 3 == 0 or i == 2 else "stopped")
            status = "stopped" if i in stopped else status
            n_epochs = epochs if status == "completed" else 1
            history = [{"epoch": e + 1, "loss": 1.0 / (e + 1), "val_score": quality - 0.05 * (n_epochs - e - 1),
                        "val_image_auroc": quality, "val_pixel_auroc": quality, "train_s": 1.0, "val_s": 0.5,
                        "val_map": "nll", "val_image_map": "nll", "val_image_score": "max"}
                       for e in range(n_epochs)]
            if status == "diverged":
                history = history[:0]
            test = None
            if status == "completed":
                test = {"image_auroc": float(np.clip(quality + rng.normal(0, 0.02), 0, 1)),
                        "pixel_auroc": float(np.clip(0.95 + (quality - 0.9) / 4, 0, 1)), "aupro": 0.8, "image_f1_max": 0.9}
            row, rows = _row(experiment, category, f"{category[:2]}{i:04d}", cfg, history, status, test,
                             space=space_name, params=replay_space(space, sample))
            write_trial(str(results), row, rows)
            study.tell(trial, quality)
    return store / experiment


def write_confirmation(store: Path, sweep: Path, scores: dict[str, list[float]], experiment: str = "confirm",
                       tests: dict[str, float] | None = None) -> Path:
    """Confirmation rows: for each sweep trial id in ``scores``, one completed run per score (seeds 1, 2, ...)."""
    import pandas as pd

    from ssnf.config import flatten
    from ssnf.results import row_config
    from ssnf.tune.overrides import CONFIRMS_KEY, EXTRACTOR_KEYS, SEED_KEY

    trials = pd.read_parquet(sweep / "results" / "trials")
    results = store / experiment / "results"
    for trial_id, values in scores.items():
        src = trials[trials["trial_id"] == trial_id].iloc[0]
        tree = row_config(src)
        # as tune_main.py --confirm builds it: the category's base, the candidate's overrides, a new seed
        keep = ("data.", "backbone.", "train.threads", "train.device", "train.seed")
        confirming = {trial_id: (src["experiment"], trial_id,
                                 {k: v for k, v in flatten(tree).items() if not k.startswith(keep) or k in EXTRACTOR_KEYS})}
        for s, value in enumerate(values, start=1):
            cfg = trial_config(tree, {CONFIRMS_KEY: trial_id, SEED_KEY: s}, confirming)
            history = [{"epoch": e + 1, "val_score": value, "val_image_auroc": value, "val_pixel_auroc": value,
                        "train_s": 1.0, "val_s": 0.5} for e in range(cfg.train.epochs)]
            test = {"image_auroc": (tests or {}).get(trial_id, 0.7), "pixel_auroc": 0.9, "aupro": 0.8, "image_f1_max": 0.9}
            row, rows = _row(experiment, src["category"], f"c{trial_id}-{s}", cfg, history, "completed", test,
                             confirms=trial_id, confirms_experiment=src["experiment"])
            write_trial(str(results), row, rows)
    return store / experiment
