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
# # Per-category selection, with confirmation
# Candidates: each category's full-budget trials, ranked by final `val_score`; the top k are re-trained
# with new seeds (`tune_main.py --confirm OUT/best/candidates.parquet`). Given the confirmation run among
# `RESULTS`, the pick is the best mean validation score over the new seeds; without it, the pick is
# provisional. Test figures are carried along, never used. Same as `python -m analysis select`.

# %% tags=["parameters"]
RESULTS = ["ray_results/demo-*"]
OUT = "reports"
REFERENCES = "analysis/references.csv"
K = 3

# %%
from pathlib import Path

from analysis import plots
from analysis.selection import optimism, select, summary, write_selection
from ssnf.results import read_results

results = read_results(RESULTS)
selection = select(results, k=K)
print(summary(selection))

# %%
for path in write_selection(selection, Path(OUT) / "best"):
    print("wrote", path)
print(plots.save(plots.confirmation(selection.table), OUT, "selection_confirmation"))

# %% [markdown]
# Did the sweep's single-seed ranking survive? A candidate whose sweep score sits far above its seeds'
# mean won the sweep on a lucky seed.

# %%
print(optimism(selection.table).to_string())
