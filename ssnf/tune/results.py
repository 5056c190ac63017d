"""Sweep results as Parquet: a versioned schema, one file per trial, written atomically.

Layout under ``<storage>/<experiment>/results/``:

- ``trials/<trial_id>.parquet``: one row per trial (see ``trials_schema``);
- ``epochs/<trial_id>.parquet``: one row per trained epoch of that trial (``EPOCHS_SCHEMA``).

A trial's files are written when it ends (completed, stopped early by the scheduler, diverged or
errored), to a temporary name and then renamed, so a crash or ``kill -9`` of the driver loses no ended
trial and leaves no half file; a resumed experiment rewrites a trial's files under the same name, so
nothing is duplicated. ``pandas.read_parquet(".../results/trials")`` reads them with no ssnf code.
Every column is typed by the schema, so files of different trials always agree. Documented in
``docs/results_schema.md``; bump ``SCHEMA_VERSION`` on any change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import typing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pyarrow import fs as pafs
from ray.tune import Callback

from ssnf import __version__
from ssnf.config import SSNFConfig, flatten, to_dict
from ssnf.files import atomic_path
from ssnf.tune.overrides import trial_config
from ssnf.tune.trainable import HISTORY

SCHEMA_VERSION = 8
STATUSES = ("completed", "stopped", "diverged", "error")
VAL_METRICS = ("val_score", "val_image_auroc", "val_pixel_auroc")
TEST_METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
EPOCH_FIELDS = ("loss", "normal", "synthetic", "active", "novel", "anchor", "weight", "val_image_auroc", "val_pixel_auroc", "val_score",
                "train_s", "val_s", "synthesis_s", "backbone_s", "gate_s", "setup_s")
SCORING_FIELDS = ("val_map", "val_image_map", "val_image_score")  # the scoring chosen on validation


def _arrow_type(tp: Any) -> pa.DataType:
    if typing.get_origin(tp) is tuple:
        return pa.list_(_arrow_type(typing.get_args(tp)[0]))
    return {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}[tp]


def config_fields(cls: type = SSNFConfig, prefix: str = "config.") -> list[pa.Field]:
    """One typed column per config value: ``config.loss.weight`` float64, ``config.backbone.strides`` list<int64>, ..."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += config_fields(tp, f"{prefix}{f.name}.")
        else:
            out.append(pa.field(f"{prefix}{f.name}", _arrow_type(tp)))
    return out


def trials_schema() -> pa.Schema:
    head = [
        pa.field("schema_version", pa.int32()), pa.field("experiment", pa.string()),
        pa.field("category", pa.string()), pa.field("trial_id", pa.string()),
        pa.field("status", pa.string()), pa.field("failure", pa.string()),
    ]
    metrics = (
        [pa.field(f"final_{m}", pa.float64()) for m in VAL_METRICS]
        + [pa.field(f"final_{m}", pa.string()) for m in SCORING_FIELDS]
        + [pa.field("best_val_score", pa.float64()), pa.field("best_epoch", pa.int64())]
        + [pa.field(f"test_{m}", pa.float64()) for m in TEST_METRICS]
    )
    tail = [
        pa.field("epochs_run", pa.int64()), pa.field("budget_epochs", pa.int64()), pa.field("retries", pa.int64()),
        pa.field("wall_s", pa.float64()), pa.field("train_s", pa.float64()), pa.field("setup_s", pa.float64()),
        pa.field("test_s", pa.float64()), pa.field("ray_overhead_s", pa.float64()), pa.field("cpus", pa.float64()), pa.field("gpus", pa.float64()),
        pa.field("seed", pa.int64()), pa.field("code_version", pa.string()), pa.field("node", pa.string()),
        pa.field("node_id", pa.string()), pa.field("node_ip", pa.string()), pa.field("gpu_ids", pa.string()),
        pa.field("device", pa.string()), pa.field("niceness", pa.int64()), pa.field("data_bytes", pa.int64()),
        pa.field("data_fetch_s", pa.float64()),
        pa.field("started_at", pa.timestamp("s", tz="UTC")), pa.field("ended_at", pa.timestamp("s", tz="UTC")),
    ]
    return pa.schema(head + config_fields() + metrics + tail, metadata={"ssnf_schema_version": str(SCHEMA_VERSION)})


EPOCHS_SCHEMA = pa.schema(
    [pa.field("schema_version", pa.int32()), pa.field("experiment", pa.string()), pa.field("category", pa.string()),
     pa.field("trial_id", pa.string()), pa.field("epoch", pa.int64())]
    + [pa.field(name, pa.float64()) for name in EPOCH_FIELDS]
    + [pa.field(name, pa.string()) for name in SCORING_FIELDS],
    metadata={"ssnf_schema_version": str(SCHEMA_VERSION)},
)


def code_version() -> str:
    """ssnf's version plus the git commit of the checkout, when there is one."""
    head = Path(__file__).resolve().parents[2] / ".git" / "HEAD"
    commit = ""
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_file = head.parent / ref[5:]
            commit = ref_file.read_text().strip() if ref_file.is_file() else ""
        else:
            commit = ref
    except OSError:
        pass
    return f"{__version__}+{commit[:10]}" if commit else __version__


def write_table(table: pa.Table, uri: str) -> None:
    """Write ``table`` to ``uri`` (local path or ``s3://``, ``gs://``...) so no reader sees half a file."""
    filesystem, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    if isinstance(filesystem, pafs.LocalFileSystem):
        with atomic_path(path) as tmp:
            pq.write_table(table, str(tmp))
    else:  # object stores publish an object only once its upload completes
        pq.write_table(table, path, filesystem=filesystem)


def trial_rows(*, experiment: str, category: str, trial_id: str, status: str, failure: str | None,
               cfg: SSNFConfig, history: list[dict], last_result: dict, started: float, ended: float,
               cpus: float, gpus: float, retries: int = 0) -> tuple[dict, list[dict]]:
    """The ``trials`` row and the ``epochs`` rows of one ended trial. Where it ran comes from its last
    result: the node that finished it (a retried trial may have started on another)."""
    final = history[-1] if history else {}
    best = max(history, key=lambda h: h.get("val_score", float("-inf"))) if history else {}
    train_s = sum(h.get("train_s", 0.0) + h.get("val_s", 0.0) for h in history)
    setup_s = sum(h.get("setup_s", 0.0) for h in history)  # one per (re)start of the trial
    test_s = float(last_result.get("test_s") or 0.0)
    wall = ended - started
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "experiment": experiment, "category": category, "trial_id": trial_id,
        "status": status, "failure": failure,
        **{f"config.{k}": v for k, v in flatten(to_dict(cfg)).items()},
        **{f"final_{m}": final.get(m) for m in VAL_METRICS + SCORING_FIELDS},
        "best_val_score": best.get("val_score"), "best_epoch": best.get("epoch"),
        **{f"test_{m}": last_result.get(f"test_{m}") for m in TEST_METRICS},
        "epochs_run": len(history), "budget_epochs": cfg.train.epochs, "retries": retries,
        "wall_s": wall, "train_s": train_s, "setup_s": setup_s, "test_s": test_s,
        "ray_overhead_s": max(0.0, wall - train_s - setup_s - test_s),
        "cpus": cpus, "gpus": gpus, "seed": cfg.train.seed, "code_version": code_version(),
        "node": str(last_result.get("hostname") or socket.gethostname()), "node_id": last_result.get("node_id"),
        "node_ip": last_result.get("node_ip"), "gpu_ids": last_result.get("gpu_ids"),
        "device": last_result.get("device"), "niceness": last_result.get("niceness"),
        "data_bytes": last_result.get("data_bytes"), "data_fetch_s": last_result.get("data_fetch_s"),
        "started_at": int(started), "ended_at": int(ended),
    }
    epochs = [
        {"schema_version": SCHEMA_VERSION, "experiment": experiment, "category": category, "trial_id": trial_id,
         "epoch": h["epoch"], **{name: h.get(name) for name in EPOCH_FIELDS + SCORING_FIELDS}}
        for h in history
    ]
    return row, epochs


class ParquetResults(Callback):
    """Tune callback in the driver: writes a trial's rows when it ends (see the module docstring)."""

    def __init__(self, results_uri: str, experiment: str, category: str, base: dict, budget_epochs: int,
                 cpus: float, gpus: float) -> None:
        self.results_uri = results_uri.rstrip("/")
        self.base = base
        self.experiment = experiment
        self.category = category
        self.budget_epochs = budget_epochs
        self.cpus = cpus
        self.gpus = gpus
        self._started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._started.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trial, error=_error_text(trial))

    def _write(self, trial, error: str | None) -> None:
        cfg = trial_config(self.base, dict(trial.config))
        history = _checkpoint_history(trial)
        last = dict(trial.last_result or {})
        if error is not None:
            status, failure = "error", error
        elif last.get("diverged"):
            status, failure = "diverged", str(last.get("failure"))
        elif len(history) < self.budget_epochs:
            status, failure = "stopped", None
        else:
            status, failure = "completed", None
        ended = time.time()
        started = self._started.get(trial.trial_id, ended - float(last.get("time_total_s", 0.0)))
        row, epochs = trial_rows(
            experiment=self.experiment, category=self.category, trial_id=trial.trial_id, status=status,
            failure=failure, cfg=cfg, history=history, last_result=last, started=started, ended=ended,
            cpus=self.cpus, gpus=self.gpus, retries=int(getattr(trial, "num_failures", 0) or 0),
        )
        write_table(pa.Table.from_pylist([row], schema=trials_schema()), f"{self.results_uri}/trials/{trial.trial_id}.parquet")
        write_table(pa.Table.from_pylist(epochs, schema=EPOCHS_SCHEMA), f"{self.results_uri}/epochs/{trial.trial_id}.parquet")


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
