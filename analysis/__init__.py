"""Analysis of ssnf sweeps from their Parquet results: per-category selection with confirmation over new
seeds, what mattered (parameter importance), honest evaluation (validation against test), plots and
notebooks. Needs pandas, pyarrow, matplotlib, optuna and scipy (and scikit-learn for fANOVA; jupytext,
nbclient and ipykernel for the notebooks): not Ray, not torch, not a GPU.

    python -m analysis select RESULTS... --out best/      # provisional, or confirmed with the confirmation run
    python -m analysis importance RESULTS... [--categories a,b] [--at auto|final|EPOCH]
    python -m analysis honest RESULTS...
    python -m analysis notebooks RESULTS... --out reports/ # execute every notebook in a kernel, PNGs beside them

RESULTS: experiment folders (``<storage>/<name>``), their ``results/`` folders, cloud URIs or globs.
"""

from analysis.honest import honest
from analysis.importance import importances, rebuild_study
from analysis.selection import Selection, candidates, select, write_selection

__all__ = ["Selection", "candidates", "honest", "importances", "rebuild_study", "select", "write_selection"]
