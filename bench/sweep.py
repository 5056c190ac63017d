"""Sweep benchmark: what sharing the frozen features saves, Ray's per-trial overhead, TPE+ASHA vs random.

    .venv/bin/python bench/sweep.py [--data-root ../shared/data] [--category tire] [--runs tpe,private,random]
    .venv/bin/python bench/sweep.py table      # print the table of the runs measured so far
    .venv/bin/python bench/sweep.py --runs random --ref REV   # the same run with another commit's code, then this one's

Each run is one ``tune_main.py`` process on local Ray (the ``smoke`` space, ``--num-samples`` trials,
``--max-concurrent`` at a time, one CPU each), started with an empty feature cache of its own:

- ``tpe``: Optuna TPE + ASHA, features computed once by the driver and shared (the default);
- ``random``: random search + ASHA at the same budget, shared features;
- ``private``: the random run's trials (same seed, same draws), but every trial computes its own
  features (``--no-shared-features``): only the sharing differs;
- ``random-fresh``: the random run with a fresh worker process per trial (``--no-reuse-actors``): only the actor
  reuse differs.

Measured: wall time of the whole sweep (driver setup included) -> trials per hour; CPU utilisation of
the machine over the run (/proc/stat; the machine is shared, so other load shows up too); per trial
from the Parquet rows: setup, training and Ray overhead (wall minus training, setup and the one test
evaluation); the best final ``val_score`` and the test metrics of that pick (reported, not selected on).
One JSON per run in bench/results/ (delete it to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from speed import worktree  # bench/speed.py: a git worktree of a revision, under the temp folder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUNS = {
    "tpe": ["--searcher", "tpe", "--scheduler", "asha"],
    "private": ["--searcher", "random", "--scheduler", "asha", "--no-shared-features"],
    "random": ["--searcher", "random", "--scheduler", "asha"],
    # the random run with a fresh worker process per trial (Ray Tune's default; ssnf reuses them since issue 29)
    "random-fresh": ["--searcher", "random", "--scheduler", "asha", "--no-reuse-actors"],
}


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_one(run: str, args, code: Path = REPO, label: str = "") -> dict:
    """One sweep with the code of ``code`` (this checkout, or a worktree of ``--ref``)."""
    storage = Path(args.storage).resolve()
    name = f"bench-{args.category}-{run}{label}"
    shutil.rmtree(storage / name, ignore_errors=True)
    features = Path(tempfile.mkdtemp(prefix="ssnf-bench-features-"))
    cmd = [sys.executable, str(code / "tune_main.py"), "--data-root", args.data_root, "--categories", args.category,
           "--space", "smoke", "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs),
           "--max-concurrent", str(args.max_concurrent), "--cpus-per-trial", "1", "--seed", str(args.seed),
           "--storage", str(storage), "--name", name, *RUNS[run]]
    # the library of ``code`` ahead of the installed one, in the driver and (inherited) in Ray's workers
    env = {**os.environ, "SSNF_FEATURES_DIR": str(features), "PYTHONPATH": str(code)}
    print(f"[{run}] {' '.join(cmd)}", flush=True)
    busy0, total0 = cpu_times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    busy1, total1 = cpu_times()
    shutil.rmtree(features, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"[{run}] tune_main.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    trials = pd.read_parquet(storage / name / "results" / "trials")
    epochs = pd.read_parquet(storage / name / "results" / "epochs")
    completed = trials[trials["status"] == "completed"]
    best = completed.loc[completed["final_val_score"].idxmax()] if len(completed) else None
    result = {
        "run": run + label, "category": args.category,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True,
                                 text=True).stdout.strip(), "command": " ".join(cmd[1:]), "wall_s": wall,
        "trials": len(trials), "statuses": trials["status"].value_counts().to_dict(),
        "trials_per_hour": len(trials) / wall * 3600, "epochs_trained": int(trials["epochs_run"].sum()),
        "cpu_utilisation": (busy1 - busy0) / max(1, total1 - total0),
        "trial_wall_s_median": float(trials["wall_s"].median()),
        "trial_setup_s_median": float(trials["setup_s"].median()),
        "trial_train_s_median": float(trials["train_s"].median()),
        "ray_overhead_s_median": float(trials["ray_overhead_s"].median()),
        "ray_overhead_s_mean": float(trials["ray_overhead_s"].mean()),
        "epoch_train_s_median": float(epochs["train_s"].median()),
        "best": None if best is None else {
            "trial_id": best["trial_id"], "val_score": float(best["final_val_score"]),
            "test_image_auroc": float(best["test_image_auroc"]), "test_pixel_auroc": float(best["test_pixel_auroc"]),
            "test_aupro": float(best["test_aupro"]),
            "config": {k.removeprefix("config."): _plain(best[k]) for k in (
                "config.model.blocks", "config.model.hidden", "config.model.couplings", "config.loss.weight",
                "config.synthesis.blend", "config.train.lr")},
        },
        "best_val_score_any_status": float(trials["final_val_score"].max()),
    }
    return result


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("sweep-*.json"))]
    lines = ["| run | trials (status) | sweep wall | trials/hour | CPU util | trial setup (median) | "
             "trial training (median) | Ray overhead per trial (median / mean) | best val_score | "
             "its test image / pixel AUROC / AUPRO | its config |", "|---" * 11 + "|"]
    for r in rows:
        b = r["best"] or {}
        cfg = ", ".join(f"{k}={v}" for k, v in (b.get("config") or {}).items())
        lines.append(
            f"| {r['run']} ({r['category']}) | {r['trials']} ({', '.join(f'{v} {k}' for k, v in r['statuses'].items())}) | "
            f"{r['wall_s'] / 60:.1f} min | {r['trials_per_hour']:.1f} | {100 * r['cpu_utilisation']:.0f} % | "
            f"{r['trial_setup_s_median']:.1f} s | {r['trial_train_s_median']:.1f} s | "
            f"{r['ray_overhead_s_median']:.1f} s / {r['ray_overhead_s_mean']:.1f} s | "
            f"{b.get('val_score', float('nan')):.4f} | {b.get('test_image_auroc', float('nan')):.3f} / "
            f"{b.get('test_pixel_auroc', float('nan')):.3f} / {b.get('test_aupro', float('nan')):.3f} | {cfg} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="run", choices=["run", "table"])
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--category", default="tire")
    p.add_argument("--runs", default="tpe,private,random")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "ssnf-bench-sweeps"))
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--ref", default="", help="also run each sweep with this git revision's code, just before")
    args = p.parse_args()
    out = Path(args.out)
    if args.command == "run":
        out.mkdir(parents=True, exist_ok=True)
        codes = ([(worktree(args.ref), "-ref")] if args.ref else []) + [(REPO, "")]
        for run in args.runs.split(","):
            for code, label in codes:
                path = out / f"sweep-{args.category}-{run}{label}.json"
                if path.is_file():
                    print(f"{path.name}: measured already")
                    continue
                result = run_one(run, args, code, label)
                path.write_text(json.dumps(result, indent=1))
                print(json.dumps({k: v for k, v in result.items() if k != "command"}), flush=True)
    print(table(out))


if __name__ == "__main__":
    main()
