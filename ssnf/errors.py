"""Errors meant for people: one line that names the bad thing and what to do about it.

The CLI prints these without a traceback; anything else escaping is a bug.
"""


class SSNFError(Exception):
    """Base class of every user-facing ssnf error."""


class DataError(SSNFError):
    """A dataset root, split, image or mask that cannot be used as it is."""


class WeightsError(SSNFError):
    """Pretrained weights that cannot be found, fetched, verified or loaded."""


class BackboneError(SSNFError):
    """An unknown backbone or a feature level it does not have."""


class MetricError(SSNFError, ValueError):
    """A metric that is undefined for its input (one class only, NaN scores, ...)."""


class ConfigError(SSNFError, ValueError):
    """A configuration value of the wrong type or out of range."""
