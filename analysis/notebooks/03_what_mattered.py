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
# # What mattered
# Parameter importance per category (fANOVA and PED-ANOVA on the Optuna trials rebuilt from the Parquet
# rows; conditional parameters such as a block that exists only in deeper stacks are made explicit, see
# `analysis/importance.py`), parallel coordinates of the full-budget trials, and learning curves.

# %% tags=["parameters"]
RESULTS = ["ray_results/demo-*"]
OUT = "reports"
REFERENCES = "analysis/references.csv"

# %%
from analysis import plots
from analysis.importance import by_category, markdown
from ssnf.results import read_results

results = read_results(RESULTS)
found = by_category(results)  # each category at its objective (see `analysis.importance.objective`)

# %%
for each in found:
    print(f"{each.category}: objective = {each.objective}")
    if each.table is None:  # too few trials for this category: said, not hidden
        print(f"  {each.note}")
        continue
    print(markdown(each.table))
    print(plots.save(plots.importance(each.table), OUT, f"importance_{each.category}"))

# %%
for each in found:
    print(plots.save(plots.parallel(results.trials, each.category), OUT, f"parallel_{each.category}"))
print(plots.save(plots.learning_curves(results.trials, results.epochs), OUT, "learning_curves"))
