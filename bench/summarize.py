"""A sweep's raw tree -> one compact Parquet table, the part of it that ``bench/results/`` keeps.

    .venv/bin/python bench/summarize.py EXPERIMENT... --out bench/results/issue20/trials.parquet

EXPERIMENT: experiment folders (``<storage>/<name>``, as ``tune_main.py`` and ``bench/analysis.py`` leave them;
globs work) or their ``results/trials`` folders. The table has one row per trial of every experiment given (sweep
trials and confirmation runs alike: ``confirms`` names the trial a run re-trains), with every column of the
trials table: status, budget, final validation and test figures, costs, timings, ``params`` and the
``config.*`` keys. Left out: the per-epoch rows, the Optuna journal, the feature-set costs and Ray's
checkpoints (the raw tree, which stays where the sweep wrote it). Read it with ``pandas.read_parquet``.

Rows are copied as written, whatever their results schema version (``schema_version`` is a column), so the
trees of earlier issues summarize too; ``ssnf.results.read_results`` is the checked reader for current ones.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def trials_folder(location: str | Path) -> Path:
    """``<experiment>/results/trials`` for an experiment folder; a trials folder as it is."""
    path = Path(location)
    for candidate in (path / "results" / "trials", path / "trials", path):
        if any(candidate.glob("*.parquet")):
            return candidate
    raise SystemExit(f"{location}: no trial rows (expected {path}/results/trials/*.parquet)")


def read_trials(locations: list[str]) -> pd.DataFrame:
    """Every trial row under ``locations`` (file by file, so rows of older schema versions keep their columns)."""
    found = [p for loc in locations for p in (sorted(glob.glob(loc)) if glob.has_magic(loc) else [loc])]
    if not found:
        raise SystemExit("no experiment folders given (or the globs match none)")
    frames = [pd.read_parquet(f) for loc in found for f in sorted(trials_folder(loc).glob("*.parquet"))]
    trials = pd.concat(frames, ignore_index=True)
    order = [c for c in ("experiment", "category", "started_at", "trial_id") if c in trials.columns]
    return trials.sort_values(order).reset_index(drop=True)


def write_summary(trials: pd.DataFrame, out: str | Path) -> Path:
    """The rows as one zstd Parquet file without pandas' per-column metadata (half the bytes for ~120 columns)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(trials, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, out, compression="zstd")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiments", nargs="+")
    p.add_argument("--out", required=True, help="the Parquet file to write")
    args = p.parse_args()
    trials = read_trials(args.experiments)
    out = write_summary(trials, args.out)
    per = ", ".join(f"{e} {n}" for e, n in trials.groupby("experiment", sort=False).size().items())
    print(f"wrote {out}: {len(trials)} trials ({per}), {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
