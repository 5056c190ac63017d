"""ssnf: self-supervised normalizing flows for industrial anomaly detection.

Importing the package is cheap (no torch): submodules load what they need.
"""

__version__ = "0.1.0"
