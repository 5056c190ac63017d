"""Cluster benchmark on this machine's loopback cluster (``tests/helpers/loopback.py``), demo data.

    .venv/bin/python bench/cluster.py [--trials 6] [--epochs 3] [--runs one-node,two-workers,node-loss]
    .venv/bin/python bench/cluster.py table     # print the runs measured so far

- ``one-node``: one Ray node with 2 CPUs (the head) runs the sweep;
- ``two-workers``: a head with no CPUs + two worker nodes of 1 CPU each: the same sweep (trials, epochs,
  seed, 1 CPU per trial, 2 at a time), so only the topology differs;
- ``loaded-nice15`` / ``loaded-nice0``: ``two-workers`` while one busy process per CPU runs at normal
  priority beside it (another job on the node), 4 trials per category, 2 epochs: trial workers at Ray's
  default niceness 15 (``--trial-niceness 15``, stopped after ``--loaded-timeout`` seconds) vs ssnf's 0;
- ``node-loss``: one long trial on a cluster of a head and two 1-CPU workers; the worker node that runs it is
  SIGKILLed (raylet and workers) after its second checkpoint. Measured: seconds until the GCS marks the
  node dead, until the trial is running again on the other node (its first report there), and until its
  next checkpoint (one epoch later).

Each sweep is one ``tune_main.py --address`` process, as a user runs it: wall time of the whole sweep
(driver setup included) -> trials per hour; per trial from the Parquet rows: the bytes it received through
the object store (extractor, features, validation and test images) and the seconds the fetch took, the
node it ran on, Ray's overhead. One JSON per run in bench/results/ (delete it to measure again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.helpers.loopback import QUIET_ENV, BusyCPUs, LoopbackCluster  # noqa: E402
from tune_main import DEMO_BASE_SETS, DEMO_CATEGORIES  # noqa: E402

RESULTS = HERE / "results"
TOPOLOGIES = {"one-node": {"workers": 0, "head_cpus": 2}, "two-workers": {"workers": 2, "cpus_per_worker": 1}}
LOADED = {"loaded-nice15": 15, "loaded-nice0": 0}


def demo_data() -> Path:
    from ssnf.data.demo import DemoSpec, ensure_demo

    root = REPO / "demo_data"
    ensure_demo(root, tuple(DEMO_CATEGORIES.split(",")), DemoSpec(size=128, n_train=30, n_test_good=6, n_per_defect=3))
    return root


def sweep_cmd(address: str, store: Path, name: str, trials: int, epochs: int, extra: list[str]) -> list[str]:
    sets = [a for s in DEMO_BASE_SETS for a in ("--set", s)]
    return [sys.executable, str(REPO / "tune_main.py"), "--address", address, "--data-root", str(demo_data()),
            "--categories", DEMO_CATEGORIES, "--num-samples", str(trials), "--max-epochs", str(epochs),
            "--scheduler", "none", "--max-concurrent", "2", "--cpus-per-trial", "1", "--seed", "0",
            "--storage", str(store), "--name", name, *sets, *extra]


def env(features: Path) -> dict:
    return {**os.environ, **QUIET_ENV, "SSNF_FEATURES_DIR": str(features)}


def run_sweep(run: str, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ssnf-bench-cluster-"))
    loaded = run in LOADED
    trials, epochs = (4, 2) if loaded else (args.trials, args.epochs)
    extra = ["--trial-niceness", str(LOADED[run])] if loaded else []
    try:
        with LoopbackCluster(**TOPOLOGIES["two-workers" if loaded else run]) as cluster:
            cmd = sweep_cmd(cluster.address, work / "store", run, trials, epochs, extra)
            print(f"[{run}] {' '.join(cmd)}", flush=True)
            with BusyCPUs() if loaded else contextlib.nullcontext():
                t = time.perf_counter()
                try:
                    done = subprocess.run(cmd, cwd=REPO, env=env(work / "features"), capture_output=True, text=True,
                                          timeout=args.loaded_timeout if loaded else None)
                    code = done.returncode
                except subprocess.TimeoutExpired:
                    code = None  # stopped: count the trials that ended in the time given
                wall = time.perf_counter() - t
        if code not in (0, None):
            raise SystemExit(f"[{run}] the sweep failed:\n{(done.stdout + done.stderr)[-3000:]}")
        rows = pd.read_parquet(work / "store" / run / "results" / "trials")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "run": run, "finished": code == 0, "requested": trials * 2, "trials": len(rows), "epochs": epochs,
        "wall_s": wall, "niceness": sorted(rows["niceness"].unique().tolist()),
        "trials_per_hour": len(rows) / wall * 3600, "statuses": rows["status"].value_counts().to_dict(),
        "nodes": int(rows["node_id"].nunique()), "per_node": rows["node_id"].str[:8].value_counts().to_dict(),
        "data_bytes": int(rows["data_bytes"].median()), "data_fetch_s_median": float(rows["data_fetch_s"].median()),
        "data_fetch_s_max": float(rows["data_fetch_s"].max()), "train_s_median": float(rows["train_s"].median()),
        "ray_overhead_s_median": float(rows["ray_overhead_s"].median()),
        "best_val_score": float(rows["final_val_score"].max()),
    }


def checkpoints(experiment: Path) -> dict[str, int]:
    """Latest checkpoint index per trial folder."""
    out: dict[str, int] = {}
    for p in experiment.glob("*/trial_*/checkpoint_*"):
        out[p.parent.name] = max(out.get(p.parent.name, -1), int(p.name.split("_")[1]))
    return out


def run_node_loss(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ssnf-bench-nodeloss-"))
    epochs = 30
    try:
        with LoopbackCluster(workers=2, cpus_per_worker=1) as cluster:
            cmd = sweep_cmd(cluster.address, work / "store", "nodeloss", 1, epochs, [])
            cmd[cmd.index("--categories") + 1] = "washer"
            driver = subprocess.Popen(cmd, cwd=REPO, env=env(work / "features"), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            experiment = work / "store" / "nodeloss"
            try:
                while driver.poll() is None and max(checkpoints(experiment).values(), default=-1) < 1:
                    time.sleep(0.05)
                before = max(checkpoints(experiment).values())
                victim = cluster.node_running_a_trial()
                t_kill = time.perf_counter()
                cluster.kill_worker(victim)
                dead_s = cluster.wait_for_death(victim)
                running_s = None
                while driver.poll() is None and max(checkpoints(experiment).values()) <= before:
                    if running_s is None:
                        try:
                            running_s = time.perf_counter() - t_kill if cluster.node_running_a_trial() != victim else None
                        except RuntimeError:
                            pass
                    time.sleep(0.05)
                checkpoint_s = time.perf_counter() - t_kill
                code = driver.wait(timeout=900)
            finally:
                if driver.poll() is None:
                    driver.kill()
        rows = pd.read_parquet(experiment / "results" / "trials")
        epochs_rows = pd.read_parquet(experiment / "results" / "epochs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (row,) = rows.itertuples()
    return {"run": "node-loss", "exit": code, "status": row.status, "retries": int(row.retries),
            "epochs_run": int(row.epochs_run), "epochs_unique": int(epochs_rows["epoch"].is_unique),
            "detected_dead_s": dead_s, "running_again_s": running_s, "next_checkpoint_s": checkpoint_s,
            "epoch_train_s_median": float(epochs_rows["train_s"].median()),
            "epoch_val_s_median": float(epochs_rows["val_s"].median())}


def table() -> None:
    for path in sorted(RESULTS.glob("cluster-*.json")):
        print(path.name, json.dumps(json.loads(path.read_text()), indent=None))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="run", choices=["run", "table"])
    p.add_argument("--runs", default="one-node,two-workers,node-loss,loaded-nice0,loaded-nice15")
    p.add_argument("--loaded-timeout", type=float, default=420, help="seconds a loaded sweep may run")
    p.add_argument("--trials", type=int, default=6, help="trials per category (two categories)")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    if args.command == "table":
        return table()
    RESULTS.mkdir(exist_ok=True)
    for run in args.runs.split(","):
        out = RESULTS / f"cluster-{run}.json"
        if out.exists():
            print(f"[{run}] {out} exists: delete it to measure again")
            continue
        result = run_node_loss(args) if run == "node-loss" else run_sweep(run, args)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), flush=True)
    table()


if __name__ == "__main__":
    main()
