"""Synthetic anomalies: exact masks, every blend mode, object-aware placement, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ssnf.config import SynthesisConfig
from ssnf.data.demo import DEFECTS, render_washer, render_weave
from ssnf.errors import ConfigError
from ssnf.synthesis.patches import foreground_mask, object_region, object_regions, synthesize
from ssnf.synthesis.reference import COPIES, reference_anomaly, reference_set


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


@pytest.mark.parametrize("foreground", ["auto", "object"])
def test_object_aware_patches_land_on_the_object(foreground):
    def share_on_object(object_aware: bool) -> float:
        rng = np.random.default_rng(1)
        hits = []
        for seed in range(8):
            target, fg = render_washer(rng, 128)
            source, _ = render_washer(rng, 128)
            cfg = SynthesisConfig(object_aware=object_aware, foreground=foreground, blend="paste", min_object=0.6)
            _, mask = synthesize(_u8(target), _u8(source), np.random.default_rng(seed), cfg)
            hits.append(fg[mask].mean())
        return float(np.mean(hits))

    aware, anywhere = share_on_object(True), share_on_object(False)
    assert aware >= 0.6  # patches need 60 % of their box on the part
    assert aware > anywhere + 0.2  # the ring covers about a third of the image


def test_object_foreground_finds_dark_parts_and_leaves_textures_free():
    rng = np.random.default_rng(3)
    cfg = SynthesisConfig(object_aware=True, foreground="object", blend="paste", min_object=0.9)
    tread, other = _dark_tread(rng), _dark_tread(rng)
    region = object_region(tread)
    for seed in range(6):  # the intensity threshold would take the bright tread blocks only
        _, mask = synthesize(tread, other, np.random.default_rng(seed), cfg)
        assert mask.any() and region[mask].mean() > 0.8
    weave, source = _pair(render_weave)
    assert object_region(weave) is None
    _, mask = synthesize(weave, source, np.random.default_rng(0), cfg)  # no object: anywhere, no error
    assert mask.any()


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


def _dark_tread(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A tyre-like image: a dark, high-contrast tread block on a dark, noisy background of similar colour."""
    image = rng.normal(30, 3, (size, size, 3))
    block = np.kron(rng.random((8, 6)) > 0.5, np.ones((size // 16, size // 16))) * 40 + 20
    y, x = size // 4, size // 3
    image[y:y + block.shape[0], x:x + block.shape[1]] = block[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def test_object_region_finds_parts_on_plain_backgrounds_and_not_in_textures():
    rng = np.random.default_rng(0)
    washer, fg = render_washer(rng, 128)
    region = object_region(_u8(washer))
    # the part with its hole filled: a part's outline, nothing of the background around it
    assert region is not None and (region & fg).sum() >= 0.9 * fg.sum() and (region & ~fg).sum() < 0.5 * fg.sum()
    assert not region[:8].any() and not region[:, :8].any()
    tread = _dark_tread(rng)
    region = object_region(tread)
    assert region is not None and region[32:96, 43:91].mean() > 0.9 and region[:16].mean() == 0
    assert object_region(_u8(render_weave(rng, 128)[0])) is None
    assert object_region(np.full((64, 96, 3), 40, np.uint8)) is None  # plain, not square: no object


def test_a_texture_category_synthesizes_exactly_as_without_object_placement():
    """Training decides objects once per category: a few spurious regions in a texture (one washer among
    weaves here) leave every image free, and the synthesis is then draw for draw the plain one."""
    rng = np.random.default_rng(2)
    washer = _u8(render_washer(rng, 96)[0])
    weaves = [_u8(render_weave(rng, 96)[0]) for _ in range(3)]
    assert object_region(washer) is not None
    assert object_regions([washer, *weaves]) == [None] * 4
    assert all(r is not None for r in object_regions([washer, _u8(render_washer(rng, 96)[0])]))
    plain = SynthesisConfig()
    aware = dataclasses.replace(plain, object_aware=True, foreground="object")
    a = synthesize(weaves[0], washer, np.random.default_rng(7), plain)
    b = synthesize(weaves[0], washer, np.random.default_rng(7), aware, regions=(None, None))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_reference_set_paints_on_the_object_of_object_categories_only():
    rng = np.random.default_rng(1)
    washers = np.stack([_u8(render_washer(rng, 96)[0]) for _ in range(4)])
    anomalies = reference_set(washers, seed=5)
    assert len(anomalies) == COPIES * len(washers)
    for i, (out, mask, _) in enumerate(anomalies):
        region = object_region(washers[i // COPIES])
        assert mask.any() and not (mask & ~region).any()
        assert not np.array_equal(out, washers[i // COPIES])
    again = reference_set(washers, seed=5)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(anomalies, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(anomalies, reference_set(washers, seed=6)))
    # a category where objects are not found in most images is treated as a texture: defects anywhere
    weaves = np.stack([_u8(render_weave(rng, 96)[0]) for _ in range(3)])
    mixed = np.concatenate([washers[:1], weaves])
    region = object_region(mixed[0])
    off_object = np.zeros((96, 96), bool)
    for seed in range(8):
        for _, m, _ in reference_set(mixed, seed)[:COPIES]:  # the washer's defects
            off_object |= m & ~region
    assert off_object.any()


@pytest.mark.parametrize("field,value,message", [
    ("blend", "glue", "synthesis.blend='glue'"),
    ("width_max", 0.6, "need 0 < min <= max < 0.5"),
    ("p_extra", 1.5, r"synthesis.p_extra=1.5 must lie in \[0, 1\]"),
    ("resize_min", 1.2, "must bracket 1"),
])
def test_bad_synthesis_config_is_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(SynthesisConfig(), **{field: value}).validate()


def test_graded_reference_defects_scale_with_the_image_s_own_variation():
    """The graded recipe: the same grade changes a smooth image by less than a busy one (contrast in units of
    the image's noise level), subtle defects are smaller and fainter than clear ones, every grade shows up,
    and the set is reproducible."""
    from ssnf.synthesis.reference import GRADES, graded_anomaly, noise_level

    rng = np.random.default_rng(0)
    smooth = np.clip(128 + rng.normal(0, 2, (96, 96, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    busy = np.clip(128 + rng.normal(0, 30, (96, 96, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    assert noise_level(busy) > 5 * noise_level(smooth)
    stats: dict = {}
    for image, name in ((smooth, "smooth"), (busy, "busy")):
        for seed in range(60):
            out, mask, kind = graded_anomaly(image, seed)
            assert mask.any() and kind.split("/")[0] in DEFECTS and kind.split("/")[1] in {g.name for g in GRADES}
            change = np.abs(out.astype(int) - image.astype(int)).max(axis=2)
            assert not change[~mask].any() or change[~mask].max() < 2, "nothing changes outside the mask"
            stats.setdefault((name, kind.split("/")[1]), []).append((np.median(change[mask]), mask.sum()))
    for name in ("smooth", "busy"):
        subtle, clear = np.array(stats[(name, "subtle")]), np.array(stats[(name, "clear")])
        assert np.median(subtle[:, 0]) < np.median(clear[:, 0]), "subtle is fainter"
        assert np.median(subtle[:, 1]) < np.median(clear[:, 1]), "subtle is smaller"
    assert np.median(np.array(stats[("smooth", "clear")])[:, 0]) < np.median(np.array(stats[("busy", "clear")])[:, 0])
    a, b = graded_anomaly(busy, 4), graded_anomaly(busy, 4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert len(reference_set(np.stack([busy, smooth]), seed=1, recipe="graded")) == 2 * COPIES
