"""From a search space's sample to an ``SSNFConfig`` (no Ray here: the driver checks spaces with it)."""

from __future__ import annotations

from typing import Any, Callable

from ssnf.config import SSNFConfig, from_dict, merge
from ssnf.errors import ConfigError

# Values a trial may not change: features are shared per category, the budget is the experiment's.
FIXED_PREFIXES = ("data.", "backbone.")
FIXED_KEYS = ("train.seed", "train.epochs")
HELPER_PREFIX = "space."


def trial_config(base: dict, sample: dict[str, Any]) -> SSNFConfig:
    """``base`` (nested) with a trial's ``sample`` (dotted keys, ``space.*`` helpers ignored) applied."""
    overrides = {k: v for k, v in sample.items() if not k.startswith(HELPER_PREFIX)}
    for key in overrides:
        if key.startswith(FIXED_PREFIXES) or key in FIXED_KEYS:
            raise ConfigError(f"a search space may not set {key!r}: it is fixed for the whole experiment")
    return from_dict(SSNFConfig, merge(base, overrides))


def check_space(space: Callable, base: dict, samples: int = 8, seed: int = 0) -> None:
    """Draw a few samples from ``space`` with Optuna's random sampler and build their configs:
    a typo in a key, a value of the wrong type or a forbidden key fails here, before any trial runs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(samples):
        trial = study.ask()
        derived = space(trial) or {}
        trial_config(base, {**trial.params, **derived}).validate()
        study.tell(trial, 0.0)
