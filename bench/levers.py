"""What each robustness lever adds (issue 28): an ablation on the real categories, test figures reported only.

    python bench/levers.py train --data-root ../shared/data --categories tire,magnetic_tile --seeds 1,2,3 \
        --epochs 8 --out bench/results/issue28/levers [--parallel 2]
    python bench/levers.py table --data-root ../shared/data --out bench/results/issue28/levers

``train`` runs ``ssnf train`` for each category, seed and trained variant (``VARIANTS``; each the default config
with graded validation and nuisance normals, ``data.nuisance=full``, plus one lever), ``--parallel`` runs at once
with one thread each; a run whose ``metrics.json`` exists is skipped (resumable). ``--flows-from SWEEPS...``: the
``flows`` variant is not trained but taken from confirmation runs of the sweep's baseline trial (ssnf's default,
which a sweep's confirmation re-trains with new seeds: the same config and budget), found in those experiments.

``table`` evaluates each row of ``ROWS`` on every seed: a row is a trained variant, possibly re-validated under
another recipe or with its scoring fixed (the validation recipe and the scoring candidates change which maps
the model scores with, not its training), its thresholds set again on its validation normals, then the test
split: image AUROC, pixel AUROC, AUPRO, the false-positive rate at the 1 % threshold on the test's good images
and on them under ``bench/robustness.SHIFTS``, and the defects' image AUROC against the shifted good images.
Validation chose every scoring; nothing is chosen on test. Prints a markdown table (mean over seeds, with the
range) and writes ``levers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BASE = ["data.reference=graded", "data.nuisance=full"]
VARIANTS = {  # trained: name -> --set overrides on top of BASE
    "flows": [],
    "augment": ["train.augment=full", "train.augment_p=0.5"],
    "noise": ["train.feature_noise=0.1"],
    "bank": ["bank.enabled=true"],
}
ROWS = [  # (row, trained variant, validation (reference, nuisance) or None: as trained, scoring overrides)
    ("default, standard validation", "flows", ("standard", "none"), {}),
    ("+ nuisance validation (graded + full)", "flows", None, {}),
    ("+ augmentation (full, p 0.5)", "augment", None, {}),
    ("+ feature noise (0.1)", "noise", None, {}),
    ("memory bank alone (knn map)", "bank", None, {"map": "knn", "image_map": "pixel"}),
    ("+ fusion (flows, bank, fused maps: chosen on validation)", "bank", None, {}),
]


def run_dir(out: Path, category: str, variant: str, seed: int) -> Path:
    return out / "runs" / category / f"{variant}-seed{seed}"


def link_flows(out: Path, experiments: list[str]) -> set[tuple[str, int]]:
    """Link the confirmation runs of each sweep's baseline trial as ``runs/<category>/flows-seed<s>``; returns the
    (category, seed) pairs linked."""
    import pandas as pd

    from analysis.selection import is_baseline
    from ssnf.results import read_results

    trials = read_results(experiments).trials
    baselines = {r["trial_id"] for _, r in trials[trials["confirms"].isna()].iterrows() if is_baseline(r)}
    linked = set()
    for _, row in trials[trials["confirms"].isin(baselines) & (trials["status"] == "completed")].iterrows():
        experiment = next(e for e in experiments if Path(e).name == row["experiment"])
        found = sorted(Path(experiment, row["category"]).glob(f"*{row['trial_id']}*/checkpoint_*/checkpoint.pt"))
        if not found or pd.isna(row["seed"]):
            continue
        folder = run_dir(out, row["category"], "flows", int(row["seed"]))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        (folder / "checkpoint.pt").symlink_to(found[-1])
        (folder / "metrics.json").write_text(json.dumps({"from": str(found[-1]), "trial_id": row["trial_id"]}))
        linked.add((row["category"], int(row["seed"])))
    return linked


def run_train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.flows_from:
        print("flows variant linked from confirmation runs:", sorted(link_flows(out, args.flows_from)), flush=True)
    jobs = []
    for category in args.categories.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant, sets in VARIANTS.items():
                folder = run_dir(out, category, variant, seed)
                if (folder / "metrics.json").is_file():
                    continue
                cmd = [sys.executable, "-m", "ssnf", "train", "--data-root", args.data_root, "--category", category,
                       "--out", str(folder), "--quiet", "--no-test"]
                for s in BASE + sets + [f"train.epochs={args.epochs}", f"train.seed={seed}", "train.threads=1"]:
                    cmd += ["--set", s]
                jobs.append((folder, cmd))
    running: list[tuple[Path, subprocess.Popen]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while jobs or running:
        while jobs and len(running) < args.parallel:
            folder, cmd = jobs.pop(0)
            folder.mkdir(parents=True, exist_ok=True)
            print("start", folder, flush=True)
            running.append((folder, subprocess.Popen(cmd, stdout=open(folder / "log.txt", "w"),
                                                     stderr=subprocess.STDOUT, env=env)))
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                print("done" if item[1].returncode == 0 else f"FAILED ({item[1].returncode})", item[0], flush=True)
        time.sleep(2)


def run_table(args: argparse.Namespace) -> None:
    import torch

    from robustness import evaluate_checkpoint

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = []
    for category in sorted(p.name for p in (out / "runs").iterdir()):
        for name, variant, validation, scoring in ROWS:
            seeds = sorted(p for p in (out / "runs" / category).glob(f"{variant}-seed*")
                           if (p / "checkpoint.pt").is_file() and (p / "metrics.json").is_file())
            for folder in seeds:
                row = evaluate_checkpoint(folder / "checkpoint.pt", args.data_root, validation, scoring)
                row.update(category=category, row=name, variant=variant, run=str(folder))
                results.append(row)
                print(f"{category} | {name} | {folder.name}: {row['image_auroc']:.3f} / {row['pixel_auroc']:.3f} / "
                      f"{row['aupro']:.3f}, FPR good {row['fpr_good']:.2f}, shifted {row['fpr_shifted']:.2f}, "
                      f"scoring {row['scoring']}", flush=True)
    (out / "levers.json").write_text(json.dumps(results, indent=1, default=float))
    print(markdown(results))


def markdown(results: list[dict]) -> str:
    keys = [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
            ("fpr_good", "FPR test good"), ("fpr_shifted", "FPR shifted good"),
            ("auroc_defects_vs_shifted_good", "AUROC defects vs shifted good"), ("val_score", "val_score")]
    lines = ["| category | row | seeds | " + " | ".join(k[1] for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for category in dict.fromkeys(r["category"] for r in results):
        for name, *_ in ROWS:
            rows = [r for r in results if r["category"] == category and r["row"] == name]
            if not rows:
                continue
            cells = []
            for key, _ in keys:
                v = np.array([r[key] for r in rows], float)
                cells.append(f"{v.mean():.3f}" + (f" ({v.min():.3f}-{v.max():.3f})" if len(v) > 1 else ""))
            lines.append(f"| {category} | {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data-root", required=True)
    t.add_argument("--categories", default="tire,magnetic_tile")
    t.add_argument("--seeds", default="1,2,3")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--parallel", type=int, default=2)
    t.add_argument("--out", required=True)
    t.add_argument("--flows-from", nargs="*", default=[], help="experiments whose confirmation runs of the baseline "
                                                                 "give the flows variant")
    b = sub.add_parser("table")
    b.add_argument("--data-root", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run_train(args) if args.cmd == "train" else run_table(args)


if __name__ == "__main__":
    main()
