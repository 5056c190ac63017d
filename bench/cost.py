"""Deployment cost of detectors side by side, in one process: ms/image at batch 1 and 32, GFLOP, parameters.

    .venv/bin/python bench/cost.py CONFIG.yaml... [--threads 1,2] [--rounds 3] [--out bench/results/issue29/cost.json]

Each config (a `best/<category>.yaml` that `analysis select` writes, or any `ssnf train --config` file; `default`
for ssnf's default config) is measured with ``ssnf.cost.measure_cost`` (random weights through the `ssnf predict`
path: cost does not depend on trained weights), ``--rounds`` times, the configs interleaved round by round so
that a change of the machine's load hits all of them alike; the fastest round is kept. Ratios against the first
config are printed: they are what to compare, not the absolute figures of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def load(spec: str):
    from ssnf.config import SSNFConfig
    from ssnf.configfile import load_config

    return SSNFConfig() if spec == "default" else load_config(spec, [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="config YAMLs, or 'default'")
    p.add_argument("--threads", default="1,2", help="torch CPU threads to measure with (comma-separated)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    import torch

    from ssnf.cost import measure_cost

    cfgs = {spec: load(spec) for spec in args.configs}
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        best: dict[str, object] = {}
        for _ in range(args.rounds):
            for spec, cfg in cfgs.items():
                cost = measure_cost(cfg)
                if spec not in best or cost.infer_ms_b1 < best[spec].infer_ms_b1:
                    best[spec] = cost
        first = best[args.configs[0]]
        for spec, cost in best.items():
            rows.append({"config": spec, **cost.as_dict(), "b1_ratio": cost.infer_ms_b1 / first.infer_ms_b1,
                         "b32_ratio": cost.infer_ms_b32 / first.infer_ms_b32})
    print("| config | threads | ms/image batch 1 | ms/image batch 32 | GFLOP/image | parameters | bank entries | "
          "batch 1 / first | batch 32 / first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['threads']} | {r['infer_ms_b1']:.1f} | {r['infer_ms_b32']:.1f} | {r['gflops']:.2f} | "
              f"{r['params'] / 1e6:.2f} M | {r['bank_entries']} | {r['b1_ratio']:.2f}x | {r['b32_ratio']:.2f}x |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
