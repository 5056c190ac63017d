"""The Optuna journal of each category's study, in the experiment folder (``optuna-dashboard`` opens it).

On a local storage Optuna writes ``<experiment>/optuna/<category>.journal`` itself; on a cloud storage it
writes a local copy, which ``JournalSync`` uploads after every ended trial and fetches back on ``--resume``.
``close_orphans`` marks the trials an interrupt left ``RUNNING`` as failed once the study has ended.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pyarrow import fs as pafs

from ssnf.files import atomic_path
from ssnf.results import filesystem

JOURNAL_DIR = "optuna"  # <experiment>/optuna/<category>.journal: the Optuna study of each category


def journal_uri(experiment: str, category: str) -> str:
    """Where the category's Optuna study is kept, in the experiment folder (``optuna-dashboard`` opens it)."""
    return f"{experiment}/{JOURNAL_DIR}/{category}.journal"


def local_journal(experiment: str, category: str) -> Path:
    """The journal file Optuna writes: in the experiment folder on a local storage; for a cloud storage a
    local copy (under ``~/.cache/ssnf/optuna``), uploaded after every ended trial (``JournalSync``)."""
    uri = journal_uri(experiment, category)
    if "://" not in uri:
        return Path(uri)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]  # one local copy per experiment URI, not per name
    return Path("~/.cache/ssnf/optuna").expanduser() / key / f"{category}.journal"


@dataclass
class JournalSync:
    """Copies a local journal to the experiment's cloud folder (called by the results callback)."""

    local: str
    uri: str

    def __call__(self) -> None:
        fs, path = filesystem(self.uri)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with open(self.local, "rb") as src, fs.open_output_stream(path) as dst:
            dst.write(src.read())

    def download(self) -> None:
        """Before ``--resume``: the experiment's journal (the cloud copy is the authority) replaces the local one."""
        fs, path = filesystem(self.uri)
        if fs.get_file_info(path).type != pafs.FileType.File:
            return
        Path(self.local).parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(path) as src, atomic_path(self.local) as tmp:
            tmp.write_bytes(src.read())

    def fresh(self) -> None:
        """A new experiment: no local journal left from an earlier one at the same URI."""
        Path(self.local).unlink(missing_ok=True)


def storage(journal: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def close_orphans(journal: Path, category: str) -> int:
    """After a study's every trial ended: mark the journal's trials still ``RUNNING`` as failed. Those were
    asked for just before an interrupt and never ran (the resumed searcher asks anew), so the study and
    ``optuna-dashboard`` show no trial running forever. Returns how many."""
    import optuna

    if not journal.is_file():
        return 0
    store = storage(journal)
    try:
        study = optuna.load_study(study_name=category, storage=store)
    except KeyError:  # no study of that name in the file
        return 0
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for trial in orphans:
        store.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(orphans)


__all__ = ["JOURNAL_DIR", "JournalSync", "close_orphans", "journal_uri", "local_journal", "storage"]
