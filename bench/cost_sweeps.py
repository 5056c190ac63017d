"""What a cost-aware sweep spent and found: per experiment, trials by status, the trial time spent on configs over
the budget, the Pareto front; a compact copy of the rows for the record.

    .venv/bin/python bench/cost_sweeps.py EXPERIMENT... [--max-ms 40] [--out bench/results/issue29/sweeps.parquet]

EXPERIMENT: sweep or confirmation folders (``<storage>/<name>``). The compact copy keeps, per trial, its status,
epochs, validation and test figures, measured costs, timings and the config keys the ``cost`` space searches:
enough for ``analysis`` tables and figures, a few KB instead of the experiment's per-trial files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

KEEP = ["experiment", "category", "trial_id", "status", "failure", "space", "params", "confirms", "confirms_experiment",
        "epochs_run", "budget_epochs", "seed", "final_val_score", "final_val_score_clean", "final_val_nuisance_fpr",
        "final_val_map", "final_val_image_map", "final_val_image_score", "test_image_auroc", "test_pixel_auroc",
        "test_aupro", "cost_params", "cost_bank_entries", "cost_gflops", "cost_infer_ms_b1", "cost_infer_ms_b32",
        "cost_threads", "cost_s", "wall_s", "train_s", "setup_s", "test_s", "ray_overhead_s", "started_at", "ended_at"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiments", nargs="+")
    p.add_argument("--max-ms", type=float, default=0.0)
    p.add_argument("--out", help="write the compact rows (every config.* column kept) here as Parquet")
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
        config = [c for c in trials.columns if c.startswith("config.")]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        trials[KEEP + config].to_parquet(args.out, index=False)
        print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
