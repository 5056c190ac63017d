"""Kept for experiments started before the sweep module was split by concern (options, connect, plans, run,
report): Ray Tune pickled ``ssnf.tune.sweep.trial_dirname`` into their ``tuner.pkl``, and ``--resume`` unpickles
it from here. New code imports from ``ssnf.tune.plans``."""

from ssnf.tune.plans import trial_dirname

__all__ = ["trial_dirname"]
