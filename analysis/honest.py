"""Honest evaluation, per category, reported and never used to choose: does the validation score rank
trials as the test split would (Spearman's rho between final ``val_score`` and the test metrics across
the full-budget trials), and what does choosing on validation cost against peeking at the test split
(the validation-selected trial's test metrics beside the best test figure of any trial)."""

from __future__ import annotations

import math

import pandas as pd
from scipy.stats import spearmanr

from analysis.selection import ranked, sweep_rows

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
            if len(ok) >= 3 and ok[column].nunique() > 1 and ok["final_val_score"].nunique() > 1:
                rho, p = spearmanr(ok["final_val_score"], ok[column])
            else:
                rho, p = float("nan"), float("nan")
            best = ok.loc[ok[column].idxmax()] if len(ok) else None
            row.update({f"rho_{name}": float(rho), f"p_{name}": float(p),
                        f"selected_{name}": float(chosen[column]) if pd.notna(chosen[column]) else float("nan"),
                        f"best_{name}": float(best[column]) if best is not None else float("nan"),
                        f"best_{name}_trial": best["trial_id"] if best is not None else None})
            row[f"gap_{name}"] = row[f"best_{name}"] - row[f"selected_{name}"]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| category | trials | metric | Spearman rho (p) vs val_score | val-selected | best on test (trial) | gap |",
             "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        if not r.get("trials"):
            lines.append(f"| {r['category']} | 0 | | no full-budget trial with test metrics | | | |")
            continue
        for name, _ in METRICS:
            rho, p = r[f"rho_{name}"], r[f"p_{name}"]
            corr = "n/a" if math.isnan(rho) else f"{rho:+.2f} ({p:.2g})"
            lines.append(f"| {r['category']} | {r['trials']} | {name} | {corr} | {r[f'selected_{name}']:.4f} | "
                         f"{r[f'best_{name}']:.4f} ({r[f'best_{name}_trial']}) | {r[f'gap_{name}']:.4f} |")
    return "\n".join(lines)
