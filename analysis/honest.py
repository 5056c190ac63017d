"""Honest evaluation, per category, reported and never used to choose: does the validation score rank
trials as the test split would (Spearman's rho between final ``val_score`` and the test metrics across
the full-budget trials), and what does choosing on validation cost against peeking at the test split
(the validation-selected trial's test metrics beside the best test figure of any trial). With confirmation
runs among the results, ``rho_all_*`` is the same correlation over every full-budget run, sweep trials and
confirmation runs alike (each a trained model with its own validation score): more models, the same question."""

from __future__ import annotations

import math

import pandas as pd

from analysis.selection import ranked, sweep_rows
from ssnf.results import full_budget

METRICS = (("image_auroc", "test_image_auroc"), ("pixel_auroc", "test_pixel_auroc"), ("aupro", "test_aupro"))


def honest(trials: pd.DataFrame) -> pd.DataFrame:
    """A row per category: trials with test metrics, Spearman rho (and p) of val_score against each test
    metric, the val-selected trial's test figures, the best-on-test figures and the gap between them."""
    rows = []
    sweep = sweep_rows(trials)
    for category in dict.fromkeys(sweep["category"]):
        full = ranked(sweep[sweep["category"] == category])
        row: dict = {"category": category, "trials": int(full["test_image_auroc"].notna().sum())}
        if not row["trials"]:
            rows.append(row)
            continue
        chosen = full.iloc[0]  # the validation pick, whatever its test metrics are
        row["val_selected"] = chosen["trial_id"]
        for name, column in METRICS:
            ok = full[full[column].notna()]
            rho, p = _spearman(ok, column)
            best = ok.loc[ok[column].idxmax()] if len(ok) else None
            row.update({f"rho_{name}": float(rho), f"p_{name}": float(p),
                        f"selected_{name}": float(chosen[column]) if pd.notna(chosen[column]) else float("nan"),
                        f"best_{name}": float(best[column]) if best is not None else float("nan"),
                        f"best_{name}_trial": best["trial_id"] if best is not None else None})
            row[f"gap_{name}"] = row[f"best_{name}"] - row[f"selected_{name}"]
        every = full_budget(trials[trials["category"] == category])
        row["runs_all"] = int(every["test_image_auroc"].notna().sum())
        for name, column in METRICS:
            row[f"rho_all_{name}"], row[f"p_all_{name}"] = _spearman(every[every[column].notna()], column)
        rows.append(row)
    return pd.DataFrame(rows)


def _spearman(rows: pd.DataFrame, column: str) -> tuple[float, float]:
    from scipy.stats import spearmanr  # here: scipy.stats takes a second to import, and `import analysis` stays quick

    if len(rows) >= 3 and rows[column].nunique() > 1 and rows["final_val_score"].nunique() > 1:
        rho, p = spearmanr(rows["final_val_score"], rows[column])
        return float(rho), float(p)
    return float("nan"), float("nan")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| category | trials | metric | Spearman rho (p) vs val_score | val-selected | best on test (trial) | gap "
             "| every full-budget run: runs, rho (p) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        if not r.get("trials"):
            lines.append(f"| {r['category']} | 0 | | no full-budget trial with test metrics | | | | |")
            continue
        for name, _ in METRICS:
            rho, p = r[f"rho_{name}"], r[f"p_{name}"]
            corr = "n/a" if math.isnan(rho) else f"{rho:+.2f} ({p:.2g})"
            rho_all, p_all = r.get(f"rho_all_{name}", float("nan")), r.get(f"p_all_{name}", float("nan"))
            every = "n/a" if math.isnan(rho_all) else f"{rho_all:+.2f} ({p_all:.2g})"
            lines.append(f"| {r['category']} | {r['trials']} | {name} | {corr} | {r[f'selected_{name}']:.4f} | "
                         f"{r[f'best_{name}']:.4f} ({r[f'best_{name}_trial']}) | {r[f'gap_{name}']:.4f} | "
                         f"{r.get('runs_all', 0)}, {every} |")
    return "\n".join(lines)
