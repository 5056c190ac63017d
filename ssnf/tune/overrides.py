"""From a search space's sample to an ``SSNFConfig`` (no Ray here: the driver checks spaces with it)."""

from __future__ import annotations

import json
from typing import Any, Callable

from ssnf.config import SSNFConfig, from_dict, merge, with_overrides
from ssnf.errors import ConfigError

# Values a trial may not change: the data and the budget are the experiment's. The feature extractor's
# setting is the exception: a space may search it, and each distinct setting's features are prepared once
# and shared with every trial that uses it (ssnf.tune.shared.FeatureStore).
FIXED_PREFIXES = ("data.", "backbone.")
FIXED_KEYS = ("train.seed", "train.epochs")
EXTRACTOR_KEYS = ("backbone.name", "backbone.strides", "data.image_size")
HELPER_PREFIX = "space."
# A confirmation run's sample: which candidate it re-trains, with which seed (tune_main.py --confirm).
CONFIRMS_KEY = "space.confirms"
SEED_KEY = "space.seed"


def trial_config(base: dict, sample: dict[str, Any], confirming: dict | None = None) -> SSNFConfig:
    """``base`` (nested) with a trial's ``sample`` (dotted keys, ``space.*`` helpers ignored) applied.
    In a confirmation run (``confirming``: candidate id -> (experiment, trial id, dotted overrides)) the
    sample names a candidate and a seed: its whole config is applied, with that seed."""
    if confirming is not None:
        _, _, overrides = confirming[sample[CONFIRMS_KEY]]
        return from_dict(SSNFConfig, merge(base, {**overrides, "train.seed": int(sample[SEED_KEY])}))
    overrides = {k: v for k, v in sample.items() if not k.startswith(HELPER_PREFIX)}
    for key in overrides:
        if (key.startswith(FIXED_PREFIXES) and key not in EXTRACTOR_KEYS) or key in FIXED_KEYS:
            raise ConfigError(f"a search space may not set {key!r}: it is fixed for the whole experiment")
    return from_dict(SSNFConfig, merge(base, overrides))


def check_space(space: Callable, base: dict, samples: int = 8, seed: int = 0) -> list[SSNFConfig]:
    """Draw a few samples from ``space`` with Optuna's random sampler and build their configs:
    a typo in a key, a value of the wrong type or a forbidden key fails here, before any trial runs.
    Returns the configs built, and one more per backbone name the space offers as a categorical choice that no
    sample drew (the caller checks every extractor setting among them: weights, strides)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs: list[SSNFConfig] = []
    names: set[str] = set()
    for _ in range(samples):
        trial = study.ask()
        derived = space(trial) or {}
        cfg = trial_config(base, {**trial.params, **derived})
        cfg.validate()
        configs.append(cfg)
        try:  # the results record each trial's parameters by replaying the space: it must replay
            params = replay_space(space, {**trial.params, **derived})
        except (AttributeError, ConfigError) as exc:
            raise ConfigError(f"the space cannot be replayed on its own sample ({exc}): use only suggest_float, "
                              "suggest_int and suggest_categorical, and branch on sampled values only") from None
        study.tell(trial, 0.0)
        if "backbone.name" in params:
            names.update(json.loads(params["backbone.name"]["distribution"])["attributes"]["choices"])
    seen = {c.backbone.name for c in configs}
    configs += [with_overrides(configs[0], backbone={"name": n}) for n in sorted(names - seen)]
    return configs


class _Replay:
    """A stand-in for ``optuna.Trial`` that answers each ``suggest_*`` with the value a sample holds and
    records the distribution it was asked with."""

    def __init__(self, sample: dict[str, Any]) -> None:
        self._sample = sample
        self.number = -1  # unknown on replay; a space must not branch on it for its parameters
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, Any] = {}

    def _answer(self, name: str, distribution) -> Any:
        if name not in self._sample:
            raise ConfigError(f"the space asks for {name!r}, which the trial's sample lacks (the space changed?)")
        value = self._sample[name]
        if not distribution._contains(distribution.to_internal_repr(value)):
            raise ConfigError(f"{name}={value!r} lies outside the space's {distribution}")
        self.params[name] = value
        self.distributions[name] = distribution
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False):
        from optuna.distributions import FloatDistribution

        return self._answer(name, FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        from optuna.distributions import IntDistribution

        return self._answer(name, IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices):
        from optuna.distributions import CategoricalDistribution

        return self._answer(name, CategoricalDistribution(list(choices)))


def replay_space(space: Callable, sample: dict[str, Any]) -> dict[str, dict]:
    """The Optuna parameters behind a trial's ``sample``: ``{name: {"value": v, "distribution": json}}``,
    found by running the define-by-run ``space`` again with every answer taken from the sample. What
    ``analysis`` rebuilds the Optuna trials from (parameter importance) without the study."""
    from optuna.distributions import distribution_to_json

    replay = _Replay(sample)
    space(replay)
    return {name: {"value": replay.params[name], "distribution": distribution_to_json(d)}
            for name, d in replay.distributions.items()}
