"""Synthetic anomalies: exact masks, every blend mode, object-aware placement, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ssnf.config import SynthesisConfig
from ssnf.data.demo import render_washer, render_weave
from ssnf.errors import ConfigError
from ssnf.synthesis.patches import foreground_mask, synthesize
from ssnf.synthesis.reference import reference_anomaly


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255).astype(np.uint8)


def _pair(render, size=96):
    rng = np.random.default_rng(0)
    return _u8(render(rng, size)[0]), _u8(render(rng, size)[0])


@pytest.mark.parametrize("blend", ["poisson", "feather", "paste"])
@pytest.mark.parametrize("object_aware", [False, True])
def test_mask_is_exactly_what_changed(blend, object_aware):
    target, source = _pair(render_washer if object_aware else render_weave)
    cfg = SynthesisConfig(blend=blend, object_aware=object_aware, p_extra=1.0)
    for seed in range(4):
        out, mask = synthesize(target, source, np.random.default_rng(seed), cfg)
        change = np.abs(out.astype(int) - target.astype(int)).mean(axis=2)
        assert out.shape == target.shape and out.dtype == np.uint8
        assert mask.any(), "the first patch is always placed"
        assert np.array_equal(mask, change > cfg.label_tol)


def test_synthesis_is_seeded():
    target, source = _pair(render_weave)
    cfg = SynthesisConfig()
    a = synthesize(target, source, np.random.default_rng(5), cfg)
    b = synthesize(target, source, np.random.default_rng(5), cfg)
    c = synthesize(target, source, np.random.default_rng(6), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_patch_count_and_size_follow_the_config():
    target, source = _pair(render_weave, 128)
    one = dataclasses.replace(SynthesisConfig(blend="paste", resize=False, shift=False), p_extra=0.0,
                              width_min=0.1, width_max=0.1)
    many = dataclasses.replace(one, max_patches=4, p_extra=1.0)
    areas = [synthesize(target, source, np.random.default_rng(s), one)[1].sum() for s in range(5)]
    assert max(areas) <= (2 * 13) ** 2  # one patch of half-width 0.1 * 128 ~ 13 px
    more = [synthesize(target, source, np.random.default_rng(s), many)[1].sum() for s in range(5)]
    assert np.mean(more) > 2 * np.mean(areas)


def test_object_aware_patches_land_on_the_object():
    def share_on_object(object_aware: bool) -> float:
        rng = np.random.default_rng(1)
        hits = []
        for seed in range(8):
            target, fg = render_washer(rng, 128)
            source, _ = render_washer(rng, 128)
            cfg = SynthesisConfig(object_aware=object_aware, blend="paste", min_object=0.6)
            _, mask = synthesize(_u8(target), _u8(source), np.random.default_rng(seed), cfg)
            hits.append(fg[mask].mean())
        return float(np.mean(hits))

    aware, anywhere = share_on_object(True), share_on_object(False)
    assert aware >= 0.6  # patches need 60 % of their box on the part
    assert aware > anywhere + 0.2  # the ring covers about a third of the image


def test_foreground_polarity():
    image = np.full((64, 64, 3), 30, np.uint8)
    image[16:48, 16:48] = 220
    assert foreground_mask(image)[32, 32] and not foreground_mask(image)[2, 2]
    inverted = 255 - image
    assert foreground_mask(inverted)[32, 32] and not foreground_mask(inverted)[2, 2]
    assert foreground_mask(image, "dark")[2, 2]


def test_reference_recipe_is_fixed_per_seed_and_differs_from_training_synthesis():
    image = _pair(render_weave)[0]
    a = reference_anomaly(image, 3)
    b = reference_anomaly(image, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    kinds = {reference_anomaly(image, s)[2] for s in range(30)}
    assert kinds == {"scratch", "hole", "contamination", "color"}
    for seed in range(12):  # the mask is exactly the visibly changed part of the painted region
        out, mask, _ = reference_anomaly(image, seed)
        change = np.abs(out.astype(int) - image.astype(int)).max(axis=2)
        assert mask.any() and (change[mask] >= 2).all()
        assert not (change[~mask] >= 2).any()


@pytest.mark.parametrize("field,value,message", [
    ("blend", "glue", "synthesis.blend='glue'"),
    ("width_max", 0.6, "need 0 < min <= max < 0.5"),
    ("p_extra", 1.5, r"synthesis.p_extra=1.5 must lie in \[0, 1\]"),
    ("resize_min", 1.2, "must bracket 1"),
])
def test_bad_synthesis_config_is_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(SynthesisConfig(), **{field: value}).validate()
