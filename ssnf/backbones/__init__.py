"""Frozen pretrained feature extractors and their offline weights.

``weights`` needs no torch (so ``ssnf weights ...`` starts fast); ``extractor`` is loaded on first use.
"""

from typing import Any

__all__ = ["FeatureExtractor", "build_extractor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ssnf.backbones import extractor

        return getattr(extractor, name)
    raise AttributeError(f"module 'ssnf.backbones' has no attribute {name!r}")
