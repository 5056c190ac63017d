"""Where an experiment lives (``<storage>/<name>``: a Tune folder per category, ``results/``, ``optuna/``), and
whether a run may write there: a new experiment's folder must not exist, a resumed one's must."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyarrow import fs as pafs

from ssnf.errors import SSNFError
from ssnf.results import filesystem, read_results
from ssnf.tune.options import SweepOptions


def experiment_uri(options: SweepOptions) -> str:
    storage = options.storage
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())  # Ray wants an absolute storage path
    return f"{storage.rstrip('/')}/{options.name}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_trials(uri: str) -> pd.DataFrame:
    """The experiment's trials table so far (empty before its first trial ended)."""
    if not exists(f"{uri}/results/trials"):
        return pd.DataFrame()
    return read_results([uri]).trials


def check_experiment(options: SweepOptions, categories: list[str]) -> None:
    """A new experiment whose folder exists, a ``--resume`` with nothing of these categories to resume, and a
    ``--resume`` of results this ssnf cannot extend (another schema version) are refused now, in one line,
    not after the remaining trials have run."""
    uri = experiment_uri(options)
    if not options.resume:
        if exists(uri):
            raise SSNFError(f"experiment {uri} exists already: add --resume to continue it, or choose another --name")
        return
    if not any(exists(f"{uri}/{c}") for c in categories):
        raise SSNFError(f"--resume: nothing to resume at {uri} (no study of {', '.join(categories)} there)")
    read_trials(uri)  # raises ResultsError on another schema version


__all__ = ["check_experiment", "exists", "experiment_uri", "read_trials"]
