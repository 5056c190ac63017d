"""What a cost-aware sweep spent and found: per experiment, trials by status, the trial time spent on configs over
the budget, the Pareto front; a compact copy of the rows for the record.

    .venv/bin/python bench/cost_sweeps.py EXPERIMENT... [--max-ms 40] [--out bench/results/issue29/sweeps.parquet]

EXPERIMENT: sweep or confirmation folders (``<storage>/<name>``). The compact copy (``--out``) is
``bench/summarize.py``'s: every trial row, no per-epoch rows; enough for ``analysis`` tables and figures, tens of
KB instead of the experiment's per-trial files. (``bench/results/issue29/sweeps.parquet`` was written before it
took every column: it has the status, epochs, validation and test figures, costs, timings and ``config.*``.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from summarize import write_summary  # bench/summarize.py: the compact copy git keeps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiments", nargs="+")
    p.add_argument("--max-ms", type=float, default=0.0)
    p.add_argument("--out", help="write the compact rows (bench/summarize.py) here as Parquet")
    args = p.parse_args()
    from ssnf.results import pareto_front, read_results

    trials = read_results(args.experiments).trials
    for (experiment, category), rows in trials.groupby(["experiment", "category"], sort=False):
        sweep = rows["confirms"].isna().all()
        span = (rows["ended_at"].max() - rows["started_at"].min()).total_seconds()
        counts = ", ".join(f"{n} {s}" for s, n in rows["status"].value_counts().items())
        over = rows[rows["status"] == "infeasible"]
        print(f"{experiment} ({category}): {len(rows)} {'trials' if sweep else 'confirmation runs'} in {span / 60:.1f} min "
              f"({counts}); trial time {rows['wall_s'].sum() / 60:.1f} min, of which on configs over the budget "
              f"{over['wall_s'].sum():.0f} s ({100 * over['wall_s'].sum() / rows['wall_s'].sum():.1f} %); "
              f"cost measurement {rows['cost_s'].median():.1f} s a trial (median), Ray overhead "
              f"{rows['ray_overhead_s'].median():.2f} s (median)")
        if sweep:
            front = pareto_front(rows)
            for _, r in front[front["on_front"]].iterrows():
                print(f"  front: {r['trial_id']} val {r['final_val_score']:.4f}  {r['cost_infer_ms_b1']:.1f} ms/image "
                      f"(b32 {r['cost_infer_ms_b32']:.1f})  {r['cost_gflops']:.2f} GFLOP  {r['config.data.image_size']} px "
                      f"strides {','.join(map(str, r['config.backbone.strides']))}  {r['config.model.blocks']} x "
                      f"{r['config.model.couplings']}, hidden {r['config.model.hidden']}, bank {r['config.bank.enabled']}, "
                      f"augment {r['config.train.augment']}, w {r['config.loss.weight']:g}  test "
                      f"{r['test_image_auroc']:.3f} / {r['test_pixel_auroc']:.3f} / {r['test_aupro']:.3f}")
    if args.out:
        out = write_summary(trials, args.out)
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
