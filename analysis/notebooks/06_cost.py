# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What a detector costs, and the best one within a budget
# Every trial's detector is timed before it trains (`ssnf.cost`: ms per image at batch 1 and 32 through the
# `ssnf predict` path, GFLOP, parameters, on its own node). The Pareto front: the full-budget trials that no
# other trial beats on both validation score and time. With `MAX_MS`, the pick is the best confirmed config
# within the budget (`python -m analysis select --max-ms`). Test figures are reported, never used.

# %% tags=["parameters"]
RESULTS = ["ray_results/demo-*"]
OUT = "reports"
REFERENCES = "analysis/references.csv"
K = 3
MAX_MS = 0.0

# %%
from analysis import plots
from analysis.selection import pareto_front, select, summary
from ssnf.results import read_results

results = read_results(RESULTS)
front = pareto_front(results.trials)
cols = ["category", "trial_id", "final_val_score", "cost_infer_ms_b1", "cost_infer_ms_b32", "cost_gflops",
        "config.data.image_size", "config.model.blocks", "config.model.couplings", "config.model.hidden", "on_front"]
print(front[cols].to_string(index=False))

# %%
selection = select(results, k=K, budget={"max_ms": MAX_MS})
print(summary(selection))
print(plots.save(plots.pareto(results.trials, selection.table, MAX_MS), OUT, "cost_pareto"))
