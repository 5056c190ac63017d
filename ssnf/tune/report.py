"""What a run reports: what each category's shared feature sets cost (printed, and kept in
``results/features/<category>.json``), and at the end each category's trials with the best full-budget
trial (``summarize``), printed as a table (``best_table``) or, for several objectives, a Pareto front
(``front_table``)."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyarrow import fs as pafs

from ssnf.files import atomic_path
from ssnf.results import filesystem, pareto_front, ranked
from ssnf.tune.experiment import read_trials
from ssnf.tune.search import OBJECTIVES


@dataclass
class CategoryOutcome:
    category: str
    trials: pd.DataFrame  # this category's rows of the trials table
    best: pd.Series | None  # the full-budget trial with the highest final val_score


def write_feature_stats(uri: str, category: str, stats: list[dict], verbose: int = 1) -> None:
    """Print what each extractor setting's shared data cost, and add it to
    ``<experiment>/results/features/<category>.json`` (a resumed sweep's store appends its own entries)."""
    fs, path = filesystem(f"{uri}/results/features/{category}.json")
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    previous = []
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        with fs.open_input_stream(path) as f:
            previous = json.loads(f.read().decode())
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(previous + [{**s, "written_at": now} for s in stats], indent=1)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(text)
    else:  # an object store publishes the object once its upload completes
        with fs.open_output_stream(path) as f:
            f.write(text.encode())
    if verbose:
        print(f"feature sets of {category} (shared through the object store; {path}):")
        for s in stats:
            print(f"  {s['features_id']}  {s['backbone']:<22} strides {','.join(map(str, s['strides'])):<8} "
                  f"{s['image_size']:>4} px  prepared in {s['prepare_s']:7.1f} s  {s['bytes'] / 2**20:8.1f} MiB  "
                  f"{s['trials']:3d} trials")


def summarize(uri: str, categories: list[str]) -> list[CategoryOutcome]:
    """Each category's rows of the experiment's trials table and its best full-budget trial (``ranked``)."""
    trials = read_trials(uri)
    outcomes = []
    for category in categories:
        rows = trials[trials["category"] == category] if len(trials) else trials
        best = ranked(rows) if len(rows) else rows
        outcomes.append(CategoryOutcome(category, rows, best.iloc[0] if len(best) else None))
    return outcomes


def best_table(outcomes: list[CategoryOutcome]) -> str:
    """The per-category best, by final validation score among trials that trained the full budget."""
    varying = ("config.model.blocks", "config.model.hidden", "config.model.couplings", "config.loss.weight",
               "config.loss.form", "config.train.lr", "config.train.augment", "config.bank.enabled")
    lines = ["| category | trials (completed/stopped/failed) | best trial | val_score | val_score clean; nuisance FPR "
             "| test image AUROC | test pixel AUROC | test AUPRO | scoring (pixel map; image score) | "
             + " | ".join(v.removeprefix("config.") for v in varying) + " |",
             "|---" * (9 + len(varying)) + "|"]
    for o in outcomes:
        counts = o.trials["status"].value_counts().to_dict() if len(o.trials) else {}
        tally = f"{counts.get('completed', 0)}/{counts.get('stopped', 0)}/{counts.get('diverged', 0) + counts.get('error', 0)}"
        if o.best is None:
            lines.append(f"| {o.category} | {tally} | none completed |" + " |" * (6 + len(varying)))
            continue
        b = o.best
        lines.append(
            f"| {o.category} | {tally} | {b['trial_id']} | {b['final_val_score']:.4f} | "
            f"{_num(b.get('final_val_score_clean'))}; {_num(b.get('final_val_nuisance_fpr'))} | {_num(b['test_image_auroc'])} | "
            f"{_num(b['test_pixel_auroc'])} | {_num(b['test_aupro'])} | {b['final_val_map']}; "
            f"{b['final_val_image_score']} of {b['final_val_image_map']} | " + " | ".join(_cell(b[v]) for v in varying) + " |")
    return "\n".join(lines)


def front_table(outcomes: list[CategoryOutcome], objectives: list[str]) -> str:
    """Per category, the Pareto front of a multi-objective sweep: val_score against its first cost objective."""
    cost = OBJECTIVES[next(o for o in objectives if o != "val_score")][0]
    lines = [f"(front on val_score and {cost})", "| category | trial | val_score | ms/image batch 1 | ms/image batch 32 | "
             "GFLOP | image size | strides | blocks | couplings | hidden | bank |", "|---" * 12 + "|"]
    for o in outcomes:
        if not len(o.trials):
            continue
        front = pareto_front(o.trials, cost)
        for _, r in front[front["on_front"]].iterrows():
            lines.append(f"| {o.category} | {r['trial_id']} | {r['final_val_score']:.4f} | {r['cost_infer_ms_b1']:.1f} | "
                         f"{r['cost_infer_ms_b32']:.1f} | {r['cost_gflops']:.2f} | {r['config.data.image_size']} | "
                         f"{','.join(str(s) for s in r['config.backbone.strides'])} | {r['config.model.blocks']} | "
                         f"{r['config.model.couplings']} | {r['config.model.hidden']} | {r['config.bank.enabled']} |")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _num(value) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.4f}"



__all__ = ["CategoryOutcome", "best_table", "front_table", "summarize", "write_feature_stats"]
