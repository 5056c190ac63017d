"""Sweep results as Parquet: the versioned schema, its writer and its readers. No Ray, no torch.

Layout under ``<storage>/<experiment>/results/``:

- ``trials/<trial_id>.parquet``: one row per trial (see ``trials_schema``);
- ``epochs/<trial_id>.parquet``: one row per trained epoch of that trial (``EPOCHS_SCHEMA``).

The Tune callback that writes them when a trial ends is ``ssnf.tune.results.ParquetResults``; it writes a
trial's files to a temporary name and then renames them, so a crash or ``kill -9`` of the driver loses no
ended trial and leaves no half file, and a resumed experiment rewrites a trial's files under the same
name, so nothing is duplicated. ``pandas.read_parquet(".../results/trials")`` reads them with no ssnf
code; ``read_results`` reads one or several experiments at once (local paths, cloud URIs, globs) and
refuses mixed schema versions. Every column is typed by the schema, so files of different trials always
agree. Documented in ``docs/results_schema.md``; bump ``SCHEMA_VERSION`` on any change.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import json
import os
import socket
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ssnf import __version__
from ssnf.config import SSNFConfig, flatten, to_dict
from ssnf.cost import Cost
from ssnf.errors import SSNFError
from ssnf.files import atomic_path

SCHEMA_VERSION = 14
STATUSES = ("completed", "stopped", "diverged", "error", "infeasible")
# the deployment cost measured before the first epoch (ssnf.cost.Cost): cost_params, cost_gflops, ...
COST_COLUMNS = {f"cost_{name}": kind for name, kind in Cost.fields().items()}
# with nuisance normals (data.nuisance): val_score counts them as normals; *_clean leaves them out;
# val_nuisance_fpr: the share of them over the image threshold set on the clean normals (NaN without them)
VAL_METRICS = ("val_score", "val_image_auroc", "val_pixel_auroc", "val_score_clean", "val_nuisance_fpr")
TEST_METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
EPOCH_FIELDS = ("loss", "normal", "synthetic", "active", "novel", "anchor", "weight", "val_image_auroc", "val_pixel_auroc", "val_score",
                "val_image_auroc_clean", "val_pixel_auroc_clean", "val_score_clean", "val_nuisance_fpr",
                "val_nuisance_image_auroc", "train_s", "val_s", "synthesis_s", "backbone_s", "gate_s", "augment_s",
                "setup_s")
SCORING_FIELDS = ("val_map", "val_image_map", "val_image_score")  # the scoring chosen on validation
CONFIG_PREFIX = "config."


class ResultsError(SSNFError):
    """Results that cannot be read or analysed as asked (named in one line)."""


def _arrow_type(tp: Any) -> pa.DataType:
    if typing.get_origin(tp) is tuple:
        return pa.list_(_arrow_type(typing.get_args(tp)[0]))
    if typing.get_origin(tp) is typing.Literal:  # a choice: the type of its values
        return _arrow_type(type(typing.get_args(tp)[0]))
    return {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}[tp]


def config_fields(cls: type = SSNFConfig, prefix: str = CONFIG_PREFIX) -> list[pa.Field]:
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
        pa.field("space", pa.string()), pa.field("params", pa.string()),
        pa.field("confirms", pa.string()), pa.field("confirms_experiment", pa.string()),
    ]
    metrics = (
        [pa.field(f"final_{m}", pa.float64()) for m in VAL_METRICS]
        + [pa.field(f"final_{m}", pa.string()) for m in SCORING_FIELDS]
        + [pa.field("best_val_score", pa.float64()), pa.field("best_epoch", pa.int64())]
        + [pa.field(f"test_{m}", pa.float64()) for m in TEST_METRICS]
        + [pa.field(name, pa.int64() if kind is int else pa.float64()) for name, kind in COST_COLUMNS.items()]
    )
    tail = [
        pa.field("epochs_run", pa.int64()), pa.field("budget_epochs", pa.int64()), pa.field("retries", pa.int64()),
        pa.field("wall_s", pa.float64()), pa.field("train_s", pa.float64()), pa.field("setup_s", pa.float64()),
        pa.field("test_s", pa.float64()), pa.field("cost_s", pa.float64()), pa.field("ray_overhead_s", pa.float64()), pa.field("cpus", pa.float64()), pa.field("gpus", pa.float64()),
        pa.field("seed", pa.int64()), pa.field("code_version", pa.string()), pa.field("node", pa.string()),
        pa.field("node_id", pa.string()), pa.field("node_ip", pa.string()), pa.field("gpu_ids", pa.string()),
        pa.field("device", pa.string()), pa.field("gpu_peak_bytes", pa.int64()), pa.field("gpu_reserved_bytes", pa.int64()),
        pa.field("niceness", pa.int64()), pa.field("data_bytes", pa.int64()),
        pa.field("data_fetch_s", pa.float64()), pa.field("features_id", pa.string()),
        pa.field("data_prepare_s", pa.float64()),
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


def code_version(root: Path | None = None) -> str:
    """ssnf's version plus the git commit of the checkout at ``root`` (default: this package's), when there is one."""
    commit = git_commit(root or Path(__file__).resolve().parents[1])
    return f"{__version__}+{commit[:10]}" if commit else __version__


def git_commit(root: Path) -> str:
    """The commit checked out at ``root`` ("" where there is none), read from the files git keeps, so that no git
    is needed (a Ray worker's image): ``.git`` is a folder or, in a worktree, a file naming one (``commondir``
    inside names the shared one); ``HEAD`` is a commit (detached) or a branch, whose commit is in a loose ref file
    or a line of ``packed-refs`` (where ``git gc`` and ``git pack-refs`` move them)."""
    try:
        gitdir = root / ".git"
        if gitdir.is_file():
            gitdir = root / gitdir.read_text().strip().removeprefix("gitdir:").strip()
        common = gitdir / "commondir"
        common = gitdir / common.read_text().strip() if common.is_file() else gitdir
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        for folder in (gitdir, common):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip()
        packed = common / "packed-refs"
        lines = packed.read_text().splitlines() if packed.is_file() else []
        return next((line.split(" ")[0] for line in lines if line.endswith(f" {ref}")), "")
    except OSError:
        return ""


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``uri`` (a local path or ``s3://``, ``gs://``, ``file://`` ...) and its path there."""
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), os.path.abspath(uri))


def write_table(table: pa.Table, uri: str) -> None:
    """Write ``table`` to ``uri`` (local path or ``s3://``, ``gs://``...) so no reader sees half a file."""
    fs, path = filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(path) as tmp:
            pq.write_table(table, str(tmp))
    else:  # object stores publish an object only once its upload completes
        pq.write_table(table, path, filesystem=fs)


def trial_rows(*, experiment: str, category: str, trial_id: str, status: str, failure: str | None,
               cfg: SSNFConfig, history: list[dict], last_result: dict, started: float, ended: float,
               cpus: float, gpus: float, retries: int = 0, space: str | None = None, params: dict | None = None,
               confirms: str | None = None, confirms_experiment: str | None = None) -> tuple[dict, list[dict]]:
    """The ``trials`` row and the ``epochs`` rows of one ended trial. Where it ran comes from its last
    result: the node that finished it (a retried trial may have started on another). ``params``: the
    search space's sample, ``{name: {"value": v, "distribution": optuna's JSON}}`` (what rebuilds the
    Optuna trial); ``confirms``: the trial a confirmation run re-trains with a new seed."""
    final = history[-1] if history else {}
    best = max(history, key=lambda h: h.get("val_score", float("-inf"))) if history else {}
    train_s = sum(h.get("train_s", 0.0) + h.get("val_s", 0.0) for h in history)
    setup_s = sum(h.get("setup_s", 0.0) for h in history)  # one per (re)start of the trial
    test_s = float(last_result.get("test_s") or 0.0)
    cost_s = float(last_result.get("cost_s") or 0.0)
    wall = ended - started
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "experiment": experiment, "category": category, "trial_id": trial_id,
        "status": status, "failure": failure, "space": space,
        "params": json.dumps(params, sort_keys=True) if params is not None else None,
        "confirms": confirms, "confirms_experiment": confirms_experiment,
        **{f"{CONFIG_PREFIX}{k}": v for k, v in flatten(to_dict(cfg)).items()},
        **{f"final_{m}": final.get(m) for m in VAL_METRICS + SCORING_FIELDS},
        "best_val_score": best.get("val_score"), "best_epoch": best.get("epoch"),
        **{f"test_{m}": last_result.get(f"test_{m}") for m in TEST_METRICS},
        **{name: _typed(last_result.get(name), kind) for name, kind in COST_COLUMNS.items()},
        "epochs_run": len(history), "budget_epochs": cfg.train.epochs, "retries": retries,
        "wall_s": wall, "train_s": train_s, "setup_s": setup_s, "test_s": test_s, "cost_s": cost_s,
        "ray_overhead_s": max(0.0, wall - train_s - setup_s - test_s - cost_s),
        "cpus": cpus, "gpus": gpus, "seed": cfg.train.seed, "code_version": code_version(),
        "node": str(last_result.get("hostname") or socket.gethostname()), "node_id": last_result.get("node_id"),
        "node_ip": last_result.get("node_ip"), "gpu_ids": last_result.get("gpu_ids"),
        "device": last_result.get("device"), "gpu_peak_bytes": _typed(last_result.get("gpu_peak_bytes"), int),
        "gpu_reserved_bytes": _typed(last_result.get("gpu_reserved_bytes"), int), "niceness": last_result.get("niceness"),
        "data_bytes": last_result.get("data_bytes"), "data_fetch_s": last_result.get("data_fetch_s"),
        "features_id": last_result.get("features_id"), "data_prepare_s": last_result.get("data_prepare_s"),
        "started_at": int(started), "ended_at": int(ended),
    }
    epochs = [
        {"schema_version": SCHEMA_VERSION, "experiment": experiment, "category": category, "trial_id": trial_id,
         "epoch": h["epoch"], **{name: h.get(name) for name in EPOCH_FIELDS + SCORING_FIELDS}}
        for h in history
    ]
    return row, epochs


def _typed(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def write_trial(results_uri: str, row: dict, epochs: list[dict]) -> None:
    """One ended trial's two files under ``<experiment>/results`` (named by its trial id)."""
    results_uri = results_uri.rstrip("/")
    write_table(pa.Table.from_pylist([row], schema=trials_schema()), f"{results_uri}/trials/{row['trial_id']}.parquet")
    write_table(pa.Table.from_pylist(epochs, schema=EPOCHS_SCHEMA), f"{results_uri}/epochs/{row['trial_id']}.parquet")


# ---------------------------------------------------------------------------------------------- readers


@dataclass
class Results:
    """The trials and epochs of one or several experiments (pandas frames, one row per trial / epoch)."""

    trials: Any  # pandas.DataFrame
    epochs: Any  # pandas.DataFrame
    sources: list[str]  # the experiment folders read

    def category(self, name: str) -> "Results":
        return Results(self.trials[self.trials["category"] == name], self.epochs[self.epochs["category"] == name],
                       self.sources)


def _glob(fs: pafs.FileSystem, path: str) -> list[str]:
    """Folders matching ``path``'s pattern one path segment at a time (``*`` never crosses a ``/``, and
    nothing below the pattern's depth is listed: a bucket's checkpoints are not walked)."""
    parts = path.split("/")
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    current = ["/".join(parts[:first]) or "/"]
    for part in parts[first:]:
        found = []
        for folder in current:
            if not glob.has_magic(part):
                found.append(f"{folder.rstrip('/')}/{part}")
                continue
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            found += [i.path for i in infos if i.type == pafs.FileType.Directory
                      and fnmatch.fnmatchcase(i.base_name, part)]
        current = found
    return sorted(p for p in current if fs.get_file_info(p).type == pafs.FileType.Directory)


def _expand(pattern: str) -> list[str]:
    """A path, a cloud URI or a glob of either: the experiment folders it names. A glob keeps only the
    folders that hold results (``results/trials``); a plain path is taken as it is (and refused later if empty)."""
    remote = "://" in pattern
    fs, path = filesystem(pattern if remote else os.path.expanduser(pattern))
    scheme = pattern.split("://", 1)[0] if remote else ""
    if glob.has_magic(path):
        matches = [p for p in _glob(fs, path)
                   if fs.get_file_info(f"{_experiment_folder(p)}/results/trials").type == pafs.FileType.Directory]
    else:
        matches = [path.rstrip("/")] if fs.get_file_info(path).type == pafs.FileType.Directory else []
    return [f"{scheme}://{_experiment_folder(p)}" if remote else _experiment_folder(p) for p in matches]


def _experiment_folder(path: str) -> str:
    """Accept the experiment folder, its ``results/`` or ``results/trials``: return the experiment's."""
    path = os.path.normpath(path) if path.startswith("/") else path.rstrip("/")
    for suffix in ("/results/trials", "/results"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _files(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                  and not os.path.basename(i.path).startswith("."))


def _read_folder(fs: pafs.FileSystem, folder: str, schema: pa.Schema, uri: str) -> pa.Table:
    tables = []
    for file in _files(fs, folder):
        version = (pq.read_schema(file, filesystem=fs).metadata or {}).get(b"ssnf_schema_version", b"?").decode()
        if version != str(SCHEMA_VERSION):
            raise ResultsError(
                f"{uri}: results of schema version {version} ({os.path.basename(file)}), but this ssnf reads version "
                f"{SCHEMA_VERSION} (docs/results_schema.md): analyse them with the ssnf that wrote them, or re-run")
        tables.append(pq.read_table(file, filesystem=fs, schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_results(locations: Iterable[str]) -> Results:
    """The trials and epochs of every experiment ``locations`` name (folders, ``results/`` folders, cloud URIs,
    globs), as one pair of frames. One line names what is wrong: nothing there, no results, another schema."""
    sources: list[str] = []
    for location in locations:
        try:
            found = _expand(str(location))
        except (OSError, pa.ArrowException) as exc:  # an unknown scheme, missing credentials, ...
            raise ResultsError(f"{location}: cannot be listed ({str(exc).splitlines()[0]})") from None
        if not found:
            raise ResultsError(f"{location}: no such folder (or the glob matches none)")
        sources += [f for f in found if f not in sources]
    trials, epochs = [], []
    for uri in sources:
        fs, path = filesystem(uri)
        try:
            got = _read_folder(fs, f"{path}/results/trials", trials_schema(), uri)
            if got.num_rows == 0:
                raise ResultsError(f"{uri}: no sweep results there (expected {uri}/results/trials/*.parquet)")
            trials.append(got)
            epochs.append(_read_folder(fs, f"{path}/results/epochs", EPOCHS_SCHEMA, uri))
        except (OSError, pa.ArrowException) as exc:  # unreadable file, credentials, a storage that fails
            raise ResultsError(f"{uri}: the results cannot be read ({str(exc).splitlines()[0]})") from None
    if not sources:
        raise ResultsError("no results given")
    t = pa.concat_tables(trials).to_pandas()
    e = pa.concat_tables(epochs).to_pandas()
    duplicated = t[t.duplicated(["experiment", "trial_id"])]
    if len(duplicated):
        raise ResultsError(f"trial {duplicated['trial_id'].iloc[0]} of experiment {duplicated['experiment'].iloc[0]} "
                           "is read twice: two of the folders given are copies of one experiment")
    return Results(t.reset_index(drop=True), e.reset_index(drop=True), sources)


def full_budget(trials: Any) -> Any:
    """The rows of trials that trained their whole budget and have a validation score."""
    ok = (trials["status"] == "completed") & (trials["epochs_run"] >= trials["budget_epochs"])
    return trials[ok & trials["final_val_score"].notna()]


def ranked(trials: Any) -> Any:
    """Full-budget trials, best final ``val_score`` first (ties by trial id): the one ranking that the sweep's
    printed best and ``analysis`` use."""
    return full_budget(trials).sort_values(["final_val_score", "trial_id"], ascending=[False, True])


def pareto_front(trials: Any, cost: str = "cost_infer_ms_b1") -> Any:
    """The category-wise full-budget sweep trials, column ``on_front``: no other trial of its category has a
    higher ``final_val_score`` at a cost no higher (or the same score cheaper). Sorted by category and cost."""
    full = full_budget(trials[trials["confirms"].isna()])
    full = full[full[cost].notna()].sort_values(["category", cost, "final_val_score"], ascending=[True, True, False])
    on = []
    for _, group in full.groupby("category", sort=False):
        best = float("-inf")
        for _, r in group.iterrows():  # cheapest first: a trial is on the front when it beats every cheaper one
            on.append(bool(r["final_val_score"] > best))
            best = max(best, r["final_val_score"])
    return full.assign(on_front=on).reset_index(drop=True)


def row_config(row: Any) -> dict:
    """The nested config of a trials row (its ``config.*`` columns), as ``ssnf train --config`` reads it."""
    from ssnf.config import unflatten

    flat = {}
    for key, value in dict(row).items():
        if isinstance(key, str) and key.startswith(CONFIG_PREFIX):
            if hasattr(value, "tolist"):  # list columns arrive as numpy arrays
                value = value.tolist()
            if isinstance(value, list):
                value = tuple(value)
            elif hasattr(value, "item"):  # numpy scalars
                value = value.item()
            flat[key[len(CONFIG_PREFIX):]] = value
    return unflatten(flat)


__all__ = ["CONFIG_PREFIX", "COST_COLUMNS", "EPOCHS_SCHEMA", "EPOCH_FIELDS", "Results", "ResultsError", "SCHEMA_VERSION",
           "SCORING_FIELDS", "STATUSES", "TEST_METRICS", "VAL_METRICS", "code_version", "filesystem", "full_budget",
           "git_commit", "pareto_front", "ranked", "read_results", "row_config", "trial_rows", "trials_schema",
           "write_table", "write_trial"]
