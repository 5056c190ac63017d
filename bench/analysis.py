#!/usr/bin/env python
"""The whole per-category choice on one dataset, each step timed: sweep -> select (provisional) ->
confirmation run -> select (confirmed) -> importance -> honest -> every notebook.

    python bench/analysis.py --name demo                       # the demo data (generated), demo sweep
    python bench/analysis.py --name tire --data-root ../shared/data --categories tire --num-samples 24 --max-epochs 6
    # issue 20: sweeps that ran already (tune_main.py ... --name paper-tire, paper-magnetic_tile), then the rest,
    # and validation's spread under both reference recipes (bench/validation_spread.py)
    python bench/analysis.py --name paper --sweeps paper-tire,paper-magnetic_tile --storage /work/sweeps \
        --data-root ../shared/data --k 2 --seeds 2 --spread --out bench/results/issue20

Everything goes to ``--storage`` (default /tmp/ssnf-bench-analysis). To ``--out`` (default
bench/results/issue19/<name>): what git keeps — ``trials.parquet`` (every trial row of the sweeps and the
confirmation, ``bench/summarize.py``), ``timings.json``, ``importance.csv``, ``best/<category>.yaml`` and the
validation spreads — and the raw tree, which ``.gitignore`` keeps out of git: ``experiments/`` (the results
with their per-epoch rows and the Optuna journals; not Ray's checkpoints), ``reports/`` (the executed notebooks
and their PNGs), ``best/*.parquet``, ``log.txt`` (every command's output).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from summarize import read_trials, write_summary  # bench/summarize.py: the compact copy git keeps

REPO = Path(__file__).resolve().parents[1]


def step(name: str, cmd: list[str], log: Path, timings: dict) -> str:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    timings[name] = round(time.perf_counter() - t, 2)
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n({timings[name]} s, exit {done.returncode})\n{done.stdout}\n{done.stderr[-3000:]}\n")
    if done.returncode != 0:
        sys.exit(f"{name} failed (exit {done.returncode}); see {log}")
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--data-root")
    p.add_argument("--categories")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--space")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the sweep's base config")
    p.add_argument("--sweeps", help="comma-separated experiments in --storage that ran already: no sweep step")
    p.add_argument("--spread", action="store_true", help="also bench/validation_spread.py on every sweep")
    p.add_argument("--storage", default="/tmp/ssnf-bench-analysis")
    p.add_argument("--out")
    args = p.parse_args()
    out = Path(args.out or REPO / "bench" / "results" / "issue19" / args.name)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    log.write_text("")
    py = sys.executable
    storage = str(Path(args.storage).resolve())
    names = args.sweeps.split(",") if args.sweeps else [args.name]
    sweeps, confirm = [f"{storage}/{n}" for n in names], f"{storage}/{args.name}-confirm"
    shutil.rmtree(confirm, ignore_errors=True)
    timings: dict = {}
    if not args.sweeps:
        shutil.rmtree(sweeps[0], ignore_errors=True)
        cmd = [py, "tune_main.py", "--name", args.name, "--storage", storage]
        for flag, value in (("--data-root", args.data_root), ("--categories", args.categories),
                            ("--num-samples", args.num_samples), ("--max-epochs", args.max_epochs),
                            ("--space", args.space)):
            if value is not None:
                cmd += [flag, str(value)]
        for kv in args.set:
            cmd += ["--set", kv]
        step("sweep", cmd, log, timings)
    best = out / "best"
    print(step("select_provisional", [py, "-m", "analysis", "select", *sweeps, "--out", str(best), "--k", str(args.k)], log, timings))
    step("confirm", [py, "tune_main.py", "--confirm", str(best / "candidates.parquet"), "--seeds", str(args.seeds),
                     "--name", f"{args.name}-confirm", "--storage", storage]
         + (["--data-root", args.data_root] if args.data_root else []), log, timings)
    print(step("select_confirmed", [py, "-m", "analysis", "select", *sweeps, confirm, "--out", str(best), "--k", str(args.k)], log, timings))
    print(step("importance", [py, "-m", "analysis", "importance", *sweeps, "--out", str(out / "importance.csv")], log, timings))
    print(step("honest", [py, "-m", "analysis", "honest", *sweeps], log, timings))
    print(step("notebooks", [py, "-m", "analysis", "notebooks", *sweeps, confirm, "--out", str(out / "reports")], log, timings))
    if args.spread:
        for src, name in zip(sweeps, names):
            print(step(f"spread_{name}", [py, "bench/validation_spread.py", src, "--out",
                                          str(out / f"validation_spread-{name}.json")], log, timings))
    for src, name in [*zip(sweeps, names), (confirm, f"{args.name}-confirm")]:
        for part in ("results", "optuna"):
            if Path(src, part).exists():
                shutil.copytree(Path(src, part), out / "experiments" / name / part, dirs_exist_ok=True)
    write_summary(read_trials([*sweeps, confirm]), out / "trials.parquet")
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    print("\ntimings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
