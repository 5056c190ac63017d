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
# # The chosen models beside the default and the peers
# The chosen config's test figures (its confirmation seeds' mean when confirmed) next to the measured
# references of `REFERENCES` (the default config, PatchCore-style nearest neighbour, ...; each row names
# its setup and the file under `bench/results` it comes from). Setups differ (image size, epochs): read
# the `setup` column before comparing.

# %% tags=["parameters"]
RESULTS = ["ray_results/demo-*"]
OUT = "reports"
REFERENCES = "analysis/references.csv"
K = 3

# %%
from analysis import plots
from analysis.compare import comparison, load_references, markdown
from analysis.selection import select
from ssnf.results import read_results

table = comparison(select(read_results(RESULTS), k=K).table, load_references(REFERENCES))
print(markdown(table))
print(plots.save(plots.comparison(table), OUT, "comparison"))
