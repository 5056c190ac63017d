#!/usr/bin/env python
"""Sweep the ssnf detector with Ray Tune + Optuna: one study per category, every result in Parquet.

    python tune_main.py                      # the embedded demo: demo data + a small smoke sweep, local Ray
    python tune_main.py --data-root ../shared/data --categories tire,magnetic_tile --space paper \\
        --num-samples 32 --max-epochs 15 --cpus-per-trial 2 --gpus-per-trial 0.25 --max-concurrent 4
    python tune_main.py ... --name my-sweep --resume   # continue an interrupted sweep
    python tune_main.py ... --address auto             # on an existing Ray cluster (see cluster/)
    python tune_main.py ... --space cost --objectives val_score,infer_ms --max-ms 40
                                             # the best detectors within 40 ms/image: a Pareto front per category
    python tune_main.py --confirm best/candidates.parquet --seeds 3 --name my-sweep-confirm
                                             # re-train `python -m analysis select`'s candidates with new seeds

User errors end in one line (``tune_main: error: ...``) and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

DEMO_ROOT = "demo_data"
DEMO_CATEGORIES = "weave,washer"
DEMO_BASE_SETS = ["data.image_size=128", "data.val_fraction=0.2", "train.batch_size=8"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tune_main.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", help=f"dataset root (default: generate the demo data in {DEMO_ROOT}/)")
    p.add_argument("--categories", help=f"comma-separated categories, one study each (demo: {DEMO_CATEGORIES})")
    p.add_argument("--space", help="search space name (search_spaces/; default smoke)")
    p.add_argument("--num-samples", type=int, default=None, help="trials per category (demo 6, else 8)")
    p.add_argument("--max-epochs", type=int, default=None, help="epochs of a full-budget trial (demo 4, else 10)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractional, e.g. 0.25")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--storage", default="ray_results", help="local folder or cloud URI (s3://, gs://)")
    p.add_argument("--shared-storage", action="store_true",
                   help="the local --storage folder is mounted at the same path on every node of the cluster")
    p.add_argument("--name", help="experiment name (default: <space>-<date>-<time>; needed for --resume)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name")
    p.add_argument("--address", help="an existing Ray cluster (e.g. auto); default: private local Ray")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--searcher", choices=["tpe", "random"], default="tpe")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha")
    p.add_argument("--config", help="YAML config every trial starts from (e.g. a run's config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base config override")
    p.add_argument("--trial-niceness", type=int, default=0,
                   help="CPU priority of the trials (0: like any other job on the node; Ray's own default is 15)")
    p.add_argument("--confirm", metavar="CANDIDATES",
                   help="instead of a search: re-train every candidate of this Parquet (`python -m analysis select "
                        "... --out DIR` writes DIR/candidates.parquet) with --seeds new seeds, full budget")
    p.add_argument("--seeds", type=int, default=3, help="--confirm: new seeds per candidate (default 3)")
    p.add_argument("--trial-memory", type=float, default=0.0, metavar="GIB",
                   help="memory a trial may allocate; a trial that needs more ends as an error and the sweep goes on "
                        "(default 0: 60 %% of its node's memory over --max-concurrent)")
    p.add_argument("--objectives", default="val_score",
                   help="comma-separated: val_score and up to two costs (infer_ms, infer_ms_b32, gflops, params); "
                        "several give one Pareto front per category (default val_score)")
    p.add_argument("--max-ms", type=float, default=0.0, metavar="MS",
                   help="a trial whose detector takes longer per image at batch 1 (measured on its node before "
                        "training) ends at once as infeasible (default 0: no bound)")
    p.add_argument("--max-gflops", type=float, default=0.0, metavar="GFLOP",
                   help="likewise for GFLOP per image (default 0: no bound)")
    p.add_argument("--no-reuse-actors", action="store_true",
                   help="a fresh worker process for every trial (Ray Tune's default; by default a trial's worker runs "
                        "the next trial and skips re-importing torch and the library)")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not run the space's baseline (ssnf's default config) as the first trial")
    p.add_argument("--no-shared-features", action="store_true",
                   help="every trial extracts its own features (for measuring what sharing saves)")
    return p.parse_args(argv)


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ssnf.errors import SSNFError

    confirm = args.confirm is not None
    demo = args.data_root is None and not confirm
    space = args.space or "smoke"
    name = args.name or f"{'confirm' if confirm else 'demo' if demo else space}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.name:
        print("tune_main: error: --resume needs the --name of the experiment to continue", file=sys.stderr)
        return 2
    if confirm and (args.space or args.num_samples or args.max_epochs or args.config or args.set):
        print("tune_main: error: --confirm re-trains the candidates' own configs and budget: --space, --num-samples, "
              "--max-epochs, --config and --set do not apply", file=sys.stderr)
        return 2
    from ssnf.tune.sweep import SweepInterrupted

    try:
        from search_spaces import SPACES
        from ssnf.config import to_dict
        from ssnf.configfile import load_config
        from ssnf.tune.search import parse_objectives
        from ssnf.tune.sweep import SweepOptions, best_table, experiment_uri, front_table, run_sweep

        sets = (DEMO_BASE_SETS if demo else []) + list(args.set)
        base = to_dict(load_config(args.config, sets))
        data_root = args.data_root
        if demo:
            from ssnf.data.demo import DemoSpec, ensure_demo

            ensure_demo(Path(DEMO_ROOT), tuple(DEMO_CATEGORIES.split(",")),
                        DemoSpec(size=128, n_train=30, n_test_good=6, n_per_defect=3))
            data_root = DEMO_ROOT
        options = SweepOptions(
            data_root=data_root,
            categories=[c for c in (args.categories or (DEMO_CATEGORIES if demo else "")).split(",") if c],
            space=space, num_samples=_default(args.num_samples, 6 if demo else 8),
            max_epochs=_default(args.max_epochs, 4 if demo else 10), cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, storage=args.storage,
            name=name, resume=args.resume, address=args.address, seed=args.seed, searcher=args.searcher,
            scheduler=args.scheduler, base=base, share_features=not args.no_shared_features,
            shared_storage=args.shared_storage, trial_niceness=args.trial_niceness, confirm=args.confirm,
            seeds=args.seeds, baseline=not args.no_baseline, trial_memory=args.trial_memory,
            objectives=args.objectives, max_ms=args.max_ms, max_gflops=args.max_gflops,
            reuse_actors=not args.no_reuse_actors,
        )
        outcomes = run_sweep(options, SPACES)
    except SweepInterrupted as exc:
        print(f"tune_main: interrupted: {exc}", file=sys.stderr)
        return 130
    except SSNFError as exc:
        print(f"tune_main: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Ray Tune took over
        print(f"tune_main: interrupted; continue with: python tune_main.py ... --name {name} --resume", file=sys.stderr)
        return 130
    uri = experiment_uri(options)
    if confirm:
        print(f"\nConfirmation runs: {uri}/results/trials (each row's `confirms` names the trial it re-trains)")
        print(f"Select the confirmed configs: python -m analysis select <sweep experiment> {uri} --out <dir>")
        return 0
    print("\nBest configuration per category (by final val_score among trials that trained the full budget):")
    print(best_table(outcomes))
    if len(parse_objectives(options.objectives)) > 1:
        print(f"\nPareto front per category ({options.objectives}; full-budget trials no other beats on both):")
        print(front_table(outcomes, parse_objectives(options.objectives)))
    print(f"\nResults: {uri}/results/trials and {uri}/results/epochs (pandas.read_parquet reads either folder)")
    print(f"Experiment: {uri} (resume with --name {name} --resume); Optuna studies: {uri}/optuna/*.journal")
    print(f"Choose and confirm per category: python -m analysis select {uri} --out best/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
