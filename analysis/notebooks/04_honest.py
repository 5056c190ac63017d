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
# # Honest evaluation
# Does validation rank trials as the test split would? Spearman's rho between final `val_score` and the
# test metrics across each category's full-budget trials, and the test figures of the validation-selected
# trial against the best test figure of any trial: what a user pays for not peeking. Reported, never used
# to choose.

# %% tags=["parameters"]
RESULTS = ["ray_results/demo-*"]
OUT = "reports"
REFERENCES = "analysis/references.csv"

# %%
from analysis import plots
from analysis.honest import honest, markdown
from ssnf.results import read_results

results = read_results(RESULTS)
table = honest(results.trials)
print(markdown(table))
print(plots.save(plots.val_vs_test(results.trials, table), OUT, "honest_val_vs_test"))
