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
DEMO_OPTIONS = {"num_samples": 6, "max_epochs": 4}  # a few minutes on 2 cores


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags of ``SweepOptions`` (``ssnf.tune.options.add_flags``; a flag not given is None), ``--config``
    and ``--set``."""
    from ssnf.tune.options import SweepOptions, add_flags

    p = argparse.ArgumentParser(prog="tune_main.py", description=__doc__.split("\n\n")[0])
    demo_values = {k: f"{getattr(SweepOptions, k)}; the demo {v}" for k, v in DEMO_OPTIONS.items()}
    add_flags(p, defaults={"data_root": f"generate the demo data in {DEMO_ROOT}/ and run the demo",
                           "categories": f"the demo's {DEMO_CATEGORIES}", "name": "<space>-<date>-<time>", **demo_values})
    p.add_argument("--config", help="YAML config every trial starts from (e.g. a run's config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base config override")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ssnf.errors import SSNFError
    from ssnf.tune.options import SweepOptions, given
    from ssnf.tune.run import SweepInterrupted

    flags = given(args)
    confirm = "confirm" in flags
    demo = "data_root" not in flags and not confirm
    kind = "confirm" if confirm else "demo" if demo else flags.get("space", SweepOptions.space)
    name = flags.pop("name", None) or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.name:
        print("tune_main: error: --resume needs the --name of the experiment to continue", file=sys.stderr)
        return 2
    if confirm and ({"space", "num_samples", "max_epochs"} & set(flags) or args.config or args.set):
        print("tune_main: error: --confirm re-trains the candidates' own configs and budget: --space, --num-samples, "
              "--max-epochs, --config and --set do not apply", file=sys.stderr)
        return 2
    try:
        from search_spaces import SPACES
        from ssnf.config import to_dict
        from ssnf.configfile import load_config
        from ssnf.tune.run import run_sweep

        base = to_dict(load_config(args.config, (DEMO_BASE_SETS if demo else []) + list(args.set)))
        if demo:
            from ssnf.data.demo import DemoSpec, ensure_demo

            ensure_demo(Path(DEMO_ROOT), tuple(DEMO_CATEGORIES.split(",")),
                        DemoSpec(size=128, n_train=30, n_test_good=6, n_per_defect=3))
            flags = {"data_root": DEMO_ROOT, "categories": DEMO_CATEGORIES.split(","), **DEMO_OPTIONS, **flags}
        options = SweepOptions(**{"data_root": None, "categories": [], **flags, "name": name, "base": base})
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
    report(options, outcomes, confirm)
    return 0


def report(options, outcomes: list, confirm: bool) -> None:
    """Where the results are and what to run next; for a search the best configuration (and front) per category."""
    from ssnf.tune.experiment import experiment_uri
    from ssnf.tune.report import best_table, front_table
    from ssnf.tune.search import parse_objectives

    uri = experiment_uri(options)
    if confirm:
        print(f"\nConfirmation runs: {uri}/results/trials (each row's `confirms` names the trial it re-trains)")
        print(f"Select the confirmed configs: python -m analysis select <sweep experiment> {uri} --out <dir>")
        return
    print("\nBest configuration per category (by final val_score among trials that trained the full budget):")
    print(best_table(outcomes))
    if len(parse_objectives(options.objectives)) > 1:
        print(f"\nPareto front per category ({options.objectives}; full-budget trials no other beats on both):")
        print(front_table(outcomes, parse_objectives(options.objectives)))
    print(f"\nResults: {uri}/results/trials and {uri}/results/epochs (pandas.read_parquet reads either folder)")
    print(f"Experiment: {uri} (resume with --name {options.name} --resume); Optuna studies: {uri}/optuna/*.journal")
    print(f"Choose and confirm per category: python -m analysis select {uri} --out best/")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ImportError as exc:  # the sweep without its extra (ssnf.tune names it), or a broken install: one line
        print(f"tune_main: error: {exc}", file=sys.stderr)
        sys.exit(2)
