"""The chosen models beside references: the default config and the peers a user would pick instead,
each with the measured test figures of a file under ``bench/results`` (``references.csv`` names it)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ssnf.results import ResultsError

REFERENCES = Path(__file__).resolve().parent / "references.csv"
COLUMNS = ("category", "method", "image_auroc", "pixel_auroc", "aupro", "setup", "source")


def load_references(path: str | Path = REFERENCES) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"references file {path} does not exist")
    table = pd.read_csv(path, comment="#")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ResultsError(f"references file {path} lacks the column(s) {', '.join(missing)}")
    return table


def comparison(selection_table: pd.DataFrame, references: pd.DataFrame) -> pd.DataFrame:
    """One row per (category, method): the chosen config (its confirmation seeds' mean test figures when
    confirmed, else the sweep trial's own), the sweep's baseline trial (the default config at the sweep's
    budget) when it was confirmed, then every reference of that category."""
    rows = []
    baseline = selection_table["baseline"] if "baseline" in selection_table else False
    shown = selection_table[selection_table["chosen"] | (baseline & (selection_table["n_seeds"] > 0))]
    for _, r in shown.iterrows():
        seeds = r["confirmed"] and r["n_seeds"] > 0
        src = "seeds_{}_mean" if seeds else "sweep_{}"
        what = "chosen" if r["chosen"] else "default config, the sweep's budget"
        rows.append({"category": r["category"], "method": f"ssnf {what} ({'confirmed' if seeds else 'provisional'})",
                     **{m: r[src.format(f"test_{m}")] for m in ("image_auroc", "pixel_auroc", "aupro")},
                     "setup": f"{r['space']} space, {r['image_size']} px, {r['epochs']} epochs, trial {r['trial_id']}"
                              + (f", mean of {r['n_seeds']} new seeds" if seeds else ", one seed"),
                     "source": r["experiment"]})
    chosen = {r["category"] for r in rows}
    refs = references[references["category"].isin(chosen)]
    return pd.DataFrame(rows + refs[list(COLUMNS)].to_dict("records"), columns=list(COLUMNS))


def markdown(table: pd.DataFrame) -> str:
    lines = ["| category | method | image AUROC | pixel AUROC | AUPRO | setup | source |", "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['category']} | {r['method']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
                     f"{r['aupro']:.3f} | {r['setup']} | {r['source']} |")
    return "\n".join(lines)
