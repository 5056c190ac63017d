"""The Ray Tune layer: the only place in ``ssnf`` that imports Ray.

- ``options.py``: ``SweepOptions`` (each option's type, default and flag spelled once), the checks every run shares;
- ``plans.py``: ``SweepPlan`` (one Optuna study per category), ``ConfirmPlan`` (candidates x new seeds): one contract;
- ``run.py``: ``run_sweep``, the one loop that runs either plan, category by category, resumable;
- ``connect.py``: starting or joining Ray, and what the cluster must grant (resources, storage every node sees);
- ``experiment.py``: where an experiment lives, and whether a new or resumed run may write there;
- ``report.py``: the feature sets' costs, the per-category best and Pareto front tables;
- ``search.py``: the searcher (Optuna through Ray Tune, objectives, a cost budget) and the scheduler;
- ``trainable.py``: ``run_trial``, the function trainable around ``ssnf.training.train``;
- ``shared.py``: the feature store that prepares each extractor setting's data once and shares it;
- ``overrides.py``: turning a search space's sample into a config (and refusing what a space may not set);
- ``results.py``: the Tune callback that writes a row per ended trial (the schema, writer and reader are
  ``ssnf/results.py``, which needs no Ray);
- ``journal.py``: each category's Optuna study in the experiment folder.
"""

import os
from importlib.util import find_spec

# The library installs without Ray and Optuna (the `tune` extra): say so in one line, before any module here
# fails on its own import.
_missing = [name for name in ("ray", "optuna") if find_spec(name) is None]
if _missing:
    raise ImportError(f"ssnf.tune (the sweep) needs {' and '.join(_missing)}: pip install ssnf[tune]")

# Local runs stay quiet and on this machine; explicit settings in the environment win.
for _key, _value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
                     ("RAY_AUTH_MODE", "disabled"),
                     # every epoch checkpoints and keeps one: the frequent experiment snapshots that
                     # follow are what makes --resume lose nothing, not a problem to warn about
                     ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")):
    os.environ.setdefault(_key, _value)
