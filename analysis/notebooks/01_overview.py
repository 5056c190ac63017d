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
# # Sweep overview
# Trials per status, the optimization history of each category's study, ASHA's rungs and where the time
# went. Reads the sweep's Parquet only (`ssnf.results.read_results`): no Ray, no torch.
# Execute all notebooks: `python -m analysis notebooks RESULTS... --out reports/`.

# %% tags=["parameters"]
RESULTS = ["ray_results/demo-*"]  # experiment folders, results/ folders, cloud URIs, globs
OUT = "reports"
REFERENCES = "analysis/references.csv"

# %%
from analysis import plots
from analysis.overview import status_counts, time_spent
from analysis.selection import sweep_rows
from ssnf.results import read_results

results = read_results(RESULTS)
sweep = sweep_rows(results.trials)  # the search trials, not confirmation runs
print(f"{len(sweep)} sweep trials from {len(results.sources)} experiment(s): {', '.join(results.sources)}")
print(status_counts(results.trials).to_string())

# %%
print(plots.save(plots.statuses(results.trials), OUT, "overview_statuses"))
print(plots.save(plots.history(results.trials), OUT, "overview_history"))
print(plots.save(plots.rungs(results.trials), OUT, "overview_rungs"))

# %% [markdown]
# Where the time went, per category: training + validation, setup, the one test pass, and Ray's share (seconds,
# summed over the sweep trials), and how many epochs the trials ran.

# %%
print(time_spent(results.trials).to_string())
