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
from analysis.importance import importances, markdown, objective
from ssnf.results import ResultsError, read_results

results = read_results(RESULTS)
categories = list(dict.fromkeys(results.trials["category"]))

# %%
for category in categories:
    part = results.category(category)
    at = objective(part.trials, part.epochs)
    print(f"{category}: objective = {'final val_score' if at == 'final' else f'val_score at epoch {at}'}")
    try:
        table = importances(part.trials, part.epochs, at=at)
    except ResultsError as exc:  # too few trials for this category: said, not hidden
        print(f"  {exc}")
        continue
    print(markdown(table))
    print(plots.save(plots.importance(table), OUT, f"importance_{category}"))

# %%
for category in categories:
    print(plots.save(plots.parallel(results.trials, category), OUT, f"parallel_{category}"))
print(plots.save(plots.learning_curves(results.trials, results.epochs), OUT, "learning_curves"))
