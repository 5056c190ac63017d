"""The Tune callback that records every ended trial in the sweep's Parquet results (``ssnf.results``).

It runs in the driver: when a trial ends (completed, stopped early by the scheduler, diverged or errored)
it reads the trial's epoch history from its latest checkpoint's ``history.json``, replays the search space
on the trial's sample to recover the Optuna parameters and their distributions (``params``), and writes
the trial's two files with ``ssnf.results.write_trial``. The schema, writer and readers live in
``ssnf.results`` (no Ray there).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from pyarrow import fs as pafs
from ray.tune import Callback

from ssnf.results import trial_rows, write_trial
from ssnf.tune.overrides import CONFIRMS_KEY, replay_space, trial_config
from ssnf.tune.trainable import HISTORY

logger = logging.getLogger(__name__)


class ParquetResults(Callback):
    """Tune callback in the driver: writes a trial's rows when it ends (see the module docstring).

    ``space``/``space_name``: the sweep's define-by-run space (replayed for ``params``); ``confirming``:
    a confirmation run's ``{candidate id: (experiment, trial id, overrides)}``, whose rows name the trial they
    re-train. ``on_end``: called after each trial's files are written (the sweep copies its Optuna journal)."""

    def __init__(self, results_uri: str, experiment: str, category: str, base: dict, cpus: float, gpus: float, space: Callable | None = None, space_name: str | None = None,
                 confirming: dict | None = None, on_end: Callable[[], None] | None = None) -> None:
        self.results_uri = results_uri.rstrip("/")
        self.base = base
        self.experiment = experiment
        self.category = category
        self.cpus = cpus
        self.gpus = gpus
        self.space = space
        self.space_name = space_name
        self.confirming = confirming
        self.on_end = on_end
        self._started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._started.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trial, error=_error_text(trial))

    def _write(self, trial, error: str | None) -> None:
        sample = dict(trial.config)
        cfg = trial_config(self.base, sample, self.confirming)
        history = _checkpoint_history(trial)
        last = dict(trial.last_result or {})
        if error is not None:
            status, failure = "error", error
        elif last.get("diverged"):
            status, failure = "diverged", str(last.get("failure"))
        elif last.get("out_of_memory"):
            status, failure = "error", str(last.get("failure"))
        elif last.get("infeasible"):
            status, failure = "infeasible", str(last.get("failure"))
        elif len(history) < cfg.train.epochs:
            status, failure = "stopped", None
        else:
            status, failure = "completed", None
        ended = time.time()
        started = self._started.get(trial.trial_id, ended - float(last.get("time_total_s", 0.0)))
        params, confirms, confirms_experiment = None, None, None
        if self.confirming is not None:
            confirms_experiment, confirms, _ = self.confirming[sample[CONFIRMS_KEY]]
        elif self.space is not None:
            try:
                params = replay_space(self.space, sample)
            except Exception as exc:  # noqa: BLE001 - a row without params is better than no row
                logger.warning("trial %s: its parameters could not be replayed on space %s (%s); params left empty",
                               trial.trial_id, self.space_name, exc)
        row, epochs = trial_rows(
            experiment=self.experiment, category=self.category, trial_id=trial.trial_id, status=status,
            failure=failure, cfg=cfg, history=history, last_result=last, started=started, ended=ended,
            cpus=self.cpus, gpus=self.gpus, retries=int(getattr(trial, "num_failures", 0) or 0),
            space=self.space_name, params=params, confirms=confirms, confirms_experiment=confirms_experiment,
        )
        write_trial(self.results_uri, row, epochs)
        if self.on_end is not None:
            try:
                self.on_end()
            except Exception as exc:  # noqa: BLE001 - a failed upload must not end the sweep; the next one retries
                logger.warning("after trial %s: %s failed (%s); retried after the next trial", trial.trial_id,
                               self.on_end, exc)


def _checkpoint_history(trial) -> list[dict]:
    """The history of the trial's latest checkpoint: exactly the epochs its model was trained for. Read from
    the checkpoint's ``history.json`` alone (not the checkpoint file), wherever the storage is."""
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return []
    path = f"{checkpoint.path}/{HISTORY}"
    if checkpoint.filesystem.get_file_info(path).type == pafs.FileType.File:
        with checkpoint.filesystem.open_input_stream(path) as stream:
            return list(json.loads(stream.read()))
    import torch

    with checkpoint.as_directory() as folder:  # a checkpoint written before history.json
        payload = torch.load(Path(folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
    return list(payload["history"])


def _error_text(trial) -> str:
    for attr in ("error_msg", "error_message"):
        text = getattr(trial, attr, None)
        if text:
            return str(text).strip().splitlines()[-1][:2000]
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.isfile(error_file):
        lines = Path(error_file).read_text(errors="replace").strip().splitlines()
        return lines[-1][:2000] if lines else "error"
    return "the trial failed (no error text available)"


__all__ = ["ParquetResults"]
