"""The Ray Tune layer: the only place in ``ssnf`` that imports Ray.

- ``trainable.py``: ``run_trial``, the function trainable around ``ssnf.training.train``;
- ``overrides.py``: turning a search space's sample into a config (and refusing what a space may not set);
- ``results.py``: the versioned Parquet schema and the callback that writes a row per trial, atomically;
- ``sweep.py``: one Optuna study per category on local Ray or a cluster, resume, the per-category best.
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
