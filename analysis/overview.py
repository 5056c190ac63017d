"""What a sweep did, per category: its trials per status, and where the time went (``01_overview``)."""

from __future__ import annotations

import pandas as pd

from analysis.selection import sweep_rows

TIME_COLUMNS = ("wall_s", "train_s", "setup_s", "test_s", "ray_overhead_s")  # training + validation, setup, test, Ray


def status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Sweep trials (not confirmation runs) per category (rows) and status (columns)."""
    return sweep_rows(trials).groupby(["category", "status"]).size().unstack(fill_value=0)


def time_spent(trials: pd.DataFrame) -> pd.DataFrame:
    """Per category: the sweep trials' seconds summed per ``TIME_COLUMNS`` (to 0.1 s), how many trials, and
    the mean and most epochs they ran (ASHA's early stops show as a mean below the most)."""
    sweep = sweep_rows(trials)
    groups = sweep.groupby("category")
    table = groups[list(TIME_COLUMNS)].sum().round(1)
    epochs = groups["epochs_run"]
    return table.assign(trials=epochs.size(), epochs_mean=epochs.mean().round(2), epochs_max=epochs.max())


__all__ = ["TIME_COLUMNS", "status_counts", "time_spent"]
