"""The sweep stage of ``bench/gpu.py``: ``tune_main.py`` on local Ray at one ``--gpus-per-trial`` setting.

The same trials at every setting: the ``smoke`` space, Optuna's random sampler with a fixed seed (its draws do not
depend on timing: each trial's configuration is drawn whole when it is asked for), no scheduler (every trial trains
its full budget, so no decision depends on which trial ended first), a fresh feature cache, the same CPUs per
trial and the same ``--max-concurrent``: only the GPU share differs, so Ray runs ``1 / gpus`` trials at a time on a
card. Measured: the sweep's wall time (driver start to exit, Ray's start and the shared data's preparation
included) and the trials' own span (first start to last end), trials per hour of each; per trial from the Parquet
rows (``ssnf.results.read_results``): its configuration, ``gpu_ids``, ``device``, peak GPU memory, times. Stopped at
its time limit (SIGINT: Ray Tune ends the running trials and keeps the ended ones' rows), the rate is that of the
trials that ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 20  # after SIGINT, before the sweep's processes are killed
MIN_SWEEP_S = 30
ROW_KEYS = ("trial_id", "status", "gpu_ids", "device", "gpus", "cpus", "gpu_peak_bytes", "gpu_reserved_bytes",
            "wall_s", "train_s", "setup_s", "cost_s", "ray_overhead_s", "data_fetch_s", "epochs_run",
            "final_val_score", "cost_infer_ms_b1", "cost_infer_ms_b32", "failure")


def command(spec: dict, storage: Path) -> list[str]:
    """``tune_main.py`` for ``spec``: the same trials whatever ``spec["gpus"]`` is."""
    sets = [a for s in spec.get("sets", []) for a in ("--set", s)]
    return [sys.executable, str(REPO / "tune_main.py"), "--data-root", spec["data_root"], "--categories",
            spec["category"], "--space", "smoke", "--searcher", "random", "--scheduler", "none", "--no-baseline",
            "--seed", str(spec["seed"]), "--num-samples", str(spec["trials"]), "--max-epochs", str(spec["epochs"]),
            "--cpus-per-trial", str(spec["cpus"]), "--gpus-per-trial", str(spec["gpus"]),
            "--max-concurrent", str(spec["concurrent"]), "--storage", str(storage), "--name", spec["name"], *sets]


def run_tune(cmd: list[str], env: dict, limit_s: float, log: Path) -> tuple[int | None, float, bool]:
    """``cmd`` in its own process group, its output in ``log``: (exit status, wall seconds, stopped at ``limit_s``)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(signum, frame):  # the driver stops this stage: the sweep (its own process group) goes with it
        os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait(timeout=limit_s), time.perf_counter() - started, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # Ray Tune stops the trials, the ended ones' rows stay
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return proc.returncode, time.perf_counter() - started, True


def rows(experiment: Path) -> list[dict]:
    """The trials' rows of ``experiment`` (none where it wrote none), with their sampled parameters' values."""
    from ssnf.results import ResultsError, read_results

    try:
        trials = read_results([experiment]).trials
    except ResultsError:
        return []
    out = []
    for _, row in trials.sort_values("started_at").iterrows():
        params = json.loads(row["params"]) if isinstance(row["params"], str) else {}
        item = {k: _plain(row.get(k)) for k in ROW_KEYS}
        item.update(params={k: v["value"] for k, v in sorted(params.items())},
                    started_at=row["started_at"].timestamp(), ended_at=row["ended_at"].timestamp())
        out.append(item)
    return out


def _plain(value):
    """A JSON value: numpy scalars as Python's, NaN / NA as None."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    try:
        return None if value != value else value  # NaN
    except (TypeError, ValueError):  # pandas.NA
        return None


def run_sweep(spec: dict) -> dict:
    """One sweep of ``spec`` (see the module docstring) and its figures."""
    limit = spec["limit_s"] - GRACE_S - 10  # room to stop it and read its rows within the stage's share
    if limit < MIN_SWEEP_S:
        raise RuntimeError(f"a {spec['limit_s']:.0f} s share is too short for a sweep (Ray's start and the shared "
                           "data take tens of seconds): not run")
    work = Path(spec["work"])
    storage = work / "sweeps"
    features = Path(tempfile.mkdtemp(prefix=f"features-{spec['name']}-", dir=work))
    env = {**os.environ, "SSNF_FEATURES_DIR": str(features)}
    cmd = command(spec, storage)
    print(" ".join(cmd), flush=True)
    log = work / f"{spec['name']}.log"
    code, wall, stopped = run_tune(cmd, env, limit, log)
    output = log.read_text(errors="replace")
    print(output, flush=True)
    trials = rows(storage / spec["name"])
    if not trials:
        how = f"stopped at {limit:.0f} s" if stopped else f"exit {code}"
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
        raise RuntimeError(f"no trial ended ({how}): {last[:300]}")
    span = max(r["ended_at"] for r in trials) - min(r["started_at"] for r in trials)
    peaks = [r["gpu_peak_bytes"] for r in trials if r["gpu_peak_bytes"] is not None]
    return {"gpus_per_trial": spec["gpus"], "cpus_per_trial": spec["cpus"], "max_concurrent": spec["concurrent"],
            "trials_asked": spec["trials"], "epochs": spec["epochs"], "returncode": code, "stopped_at_limit": stopped,
            "wall_s": wall, "ended": len(trials), "span_s": span,
            "trials_per_hour": 3600.0 * len(trials) / wall,
            "trials_per_hour_span": 3600.0 * len(trials) / span if span > 0 else None,
            "statuses": {s: sum(r["status"] == s for r in trials) for s in sorted({r["status"] for r in trials})},
            "gpu_ids": sorted({str(r["gpu_ids"]) for r in trials}), "devices": sorted({str(r["device"]) for r in trials}),
            "gpu_peak_bytes_max": max(peaks) if peaks else None, "trials": trials}
