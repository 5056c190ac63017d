"""The loss forms and the scoring maps, on hand-made flow outputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ssnf.config import LossConfig, ScoringConfig, SSNFConfig, TrainConfig
from ssnf.errors import ConfigError
from ssnf.metrics import pixel_auroc
from ssnf.loss import image_nll, nll_maps, scheduled_weight, ssnf_loss
from ssnf.synthesis.positions import anchor_positions, covered_positions, novel_positions, unchanged_positions
from ssnf.scoring import (anomaly_maps, bootstrap_pixel_auroc, choose, gaussian_blur, image_scores, position_maps,
                          resolve, score)


def outputs(levels: list[float], channels: int = 4, hw: int = 4, log_jac: float = 0.0, requires_grad=True):
    """One scale; image i has every z equal to levels[i]."""
    z = torch.stack([torch.full((channels, hw, hw), v) for v in levels]).requires_grad_(requires_grad)
    return [(z, torch.full((len(levels), hw, hw), log_jac))]


def test_nll_is_half_squared_norm_minus_log_det_per_dimension():
    out = outputs([1.0, 2.0], channels=3, hw=2, log_jac=0.6)
    assert torch.allclose(nll_maps(out)[0][0], torch.full((2, 2), 0.5 * 3 * 1.0 - 0.6))
    expected = torch.tensor([(0.5 * 12 * 1 - 4 * 0.6) / 12, (0.5 * 12 * 4 - 4 * 0.6) / 12])
    assert torch.allclose(image_nll(out), expected)


def test_weight_zero_is_plain_fastflow_nll():
    normal = outputs([0.5, 1.0])
    loss, terms = ssnf_loss(normal, outputs([0.1]), None, LossConfig(weight=0.0))
    assert float(loss.detach()) == pytest.approx(float(image_nll(normal).mean().detach()))
    assert terms["synthetic"] == 0.0 and terms["active"] == 0.0


def test_constrained_counts_only_synthetics_more_likely_than_the_worst_normal():
    normal = outputs([0.5, 1.0])  # worst normal NLL per dim: 0.5
    synthetic = outputs([0.2, 3.0])  # 0.02 (counts) and 4.5 (does not)
    loss, terms = ssnf_loss(normal, synthetic, None, LossConfig(weight=2.0, form="constrained"))
    assert terms["active"] == 0.5
    assert terms["synthetic"] == pytest.approx(-0.5 * 0.2**2)
    loss.backward()
    grad = synthetic[0][0].grad
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0
    capped = ssnf_loss(outputs([0.5, 1.0]), outputs([0.2, 0.9]), None, LossConfig(form="constrained", cap=0.1))[1]
    assert capped["active"] == 0.5  # 0.9 -> 0.405 per dim: below the worst normal but above the cap


def test_hinge_pushes_until_margin_past_the_worst_normal():
    normal = outputs([1.0])  # NLL per dim 0.5
    done = ssnf_loss(normal, outputs([2.0]), None, LossConfig(form="hinge", margin=1.0))[1]  # 2.0 >= 1.5
    assert done["synthetic"] == 0.0 and done["active"] == 0.0
    pushed = ssnf_loss(normal, outputs([1.2]), None, LossConfig(form="hinge", margin=1.0))[1]  # 0.72 < 1.5
    assert pushed["synthetic"] == pytest.approx(1.5 - 0.72) and pushed["active"] == 1.0


def test_mask_form_only_touches_masked_positions():
    normal = outputs([1.0])
    synthetic = outputs([0.1])
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :8] = 1  # the top-left quarter of a 4x4 map: positions [0:2, 0:2]
    loss, terms = ssnf_loss(normal, synthetic, mask, LossConfig(form="mask", margin=0.1))
    loss.backward()
    grad = synthetic[0][0].grad[0].abs().sum(dim=0)
    assert (grad[:2, :2] > 0).all() and grad[2:].sum() == 0 and grad[:, 2:].sum() == 0
    assert terms["active"] == 1.0


def _texture(generator: torch.Generator, images: int = 6, channels: int = 8, hw: int = 8) -> torch.Tensor:
    """Normal 'texture': every position's feature is one of 5 prototypes plus a little noise."""
    prototypes = torch.randn(5, channels, generator=generator) * 3
    pick = torch.randint(5, (images, hw, hw), generator=generator)
    return (prototypes[pick] + 0.05 * torch.randn(images, hw, hw, channels, generator=generator)).permute(0, 3, 1, 2)


def test_novel_gate_keeps_foreign_content_and_drops_pasted_normal_texture():
    g = torch.Generator().manual_seed(0)
    normal = _texture(g)
    synthetic = normal.roll(1, dims=0).clone()  # every image's content taken from another normal image
    synthetic[:, :, :2, :2] = 10.0 + torch.randn(6, 8, 2, 2, generator=g)  # foreign content top-left
    covered = [torch.zeros(6, 8, 8, dtype=torch.bool)]
    covered[0][:, :4, :4] = True  # the mask covers the foreign corner and some pasted normal texture
    novel = novel_positions([normal], [synthetic], covered, 0.99)[0]
    assert novel[:, :2, :2].all()
    assert not novel[:, 2:4, :4].any() and not novel[:, :4, 2:4].any()  # normal texture, though pasted
    assert not novel[~covered[0]].any()  # never outside the mask


def test_mask_loss_pushes_only_where_the_gate_says():
    normal, synthetic = outputs([1.0]), outputs([0.1])
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :8] = 1  # covers positions [0:2, 0:2] of the 4x4 map
    push = [torch.zeros(1, 4, 4, dtype=torch.bool)]
    push[0][0, 0, 0] = True
    push[0][0, 3, 3] = True  # not covered: never pushed
    cfg = LossConfig(form="mask", margin=0.1, gate="novel")
    loss, terms = ssnf_loss(normal, synthetic, mask, cfg, push)
    loss.backward()
    grad = synthetic[0][0].grad[0].abs().sum(dim=0)
    assert grad[0, 0] > 0 and (grad > 0).sum() == 1
    assert terms["novel"] == 0.25 and terms["active"] == 0.25
    # summed over the pushed position, divided by the 4 covered ones: the gate does not push harder
    assert terms["synthetic"] == pytest.approx((0.5 + 0.1 - 0.005) / 4)
    nothing = ssnf_loss(outputs([1.0]), outputs([0.1]), mask, cfg, [torch.zeros(1, 4, 4, dtype=torch.bool)])[1]
    assert nothing["synthetic"] == 0.0 and nothing["novel"] == 0.0
    assert covered_positions(mask, [(4, 4)])[0].sum() == 4


def test_unchanged_positions_are_those_the_synthesis_left_alone():
    g = torch.Generator().manual_seed(1)
    original = torch.randn(2, 8, 4, 4, generator=g)
    synthetic = original.clone()
    synthetic[0, :, 1, 2] += 0.2 * original[0, :, 1, 2]  # moved by 20 % of its norm: changed
    synthetic[1, :, 3, 3] += 0.01 * original[1, :, 3, 3]  # by 1 %: unchanged at tol 0.05
    held = unchanged_positions([original], [synthetic], 0.05)[0]
    assert not held[0, 1, 2] and held[0].sum() == 15 and held[1].all()
    assert anchor_positions(LossConfig(anchor="none"), [original], [synthetic]) is None
    assert anchor_positions(LossConfig(anchor="unchanged", weight=0.0), [original], [synthetic]) is None
    assert anchor_positions(LossConfig(anchor="unchanged"), [original], [synthetic])[0].equal(held)


def test_anchor_holds_unchanged_positions_at_their_original_nll_and_nothing_else():
    normal = outputs([1.0])  # NLL per dimension 0.5 everywhere
    z = torch.full((1, 4, 4, 4), 1.0)
    z[0, :, 0, 0] = 3.0  # the patch: 4.5 per dimension
    z[0, :, 3, 3] = 2.0  # a rise outside it: 2.0 per dimension
    z[0, :, 2, 2] = 0.5  # a fall: not penalised
    synthetic = [(z.requires_grad_(True), torch.zeros(1, 4, 4))]
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :4, :4] = 1  # covers position (0, 0)
    anchor = [torch.ones(1, 4, 4, dtype=torch.bool)]
    anchor[0][0, 0, 0] = False  # the patch changed the features there
    cfg = LossConfig(form="mask", margin=1.0, gate="none", weight=0.5, anchor="unchanged")
    loss, terms = ssnf_loss(normal, synthetic, mask, cfg, anchor=anchor)
    assert terms["anchor"] == pytest.approx((2.0 - 0.5) / 15)
    loss.backward()
    grad = synthetic[0][0].grad[0].abs().sum(dim=0)
    assert grad[3, 3] > 0 and grad[2, 2] == 0 and grad[1, 1] == 0  # only the rise is held
    assert grad[0, 0] == 0  # the patch is past the margin (4.5 > 0.5 + 1) and not anchored
    assert terms["synthetic"] == 0.0
    assert float(loss.detach()) == pytest.approx(0.5 + 0.5 * (2.0 - 0.5) / 15)
    free = ssnf_loss(normal, synthetic, mask, dataclasses.replace(cfg, anchor="none"))[1]
    assert free["anchor"] == 0.0 and free["loss"] == pytest.approx(0.5)


def test_loss_anchor_values_are_checked():
    with pytest.raises(ConfigError, match="loss.anchor='all'"):
        LossConfig(anchor="all").validate()
    with pytest.raises(ConfigError, match="loss.anchor_tol=0.0"):
        LossConfig(anchor_tol=0.0).validate()
    cfg = SSNFConfig()
    cfg.loss.anchor, cfg.synthesis.pool_size = "unchanged", 64
    with pytest.raises(ConfigError, match="synthesis.pool_size=64"):
        cfg.validate()
    cfg.loss.weight = 0.0  # no synthetic term: nothing to hold, nothing to refuse
    cfg.validate()


def test_loss_gate_values_are_checked():
    with pytest.raises(ConfigError, match="loss.gate='nearest'"):
        LossConfig(gate="nearest").validate()
    with pytest.raises(ConfigError, match="loss.gate_quantile=1.0"):
        LossConfig(gate_quantile=1.0).validate()
    with pytest.raises(ConfigError, match="train.batch_size=1 must be at least 2"):
        SSNFConfig(train=TrainConfig(batch_size=1)).validate()
    SSNFConfig(train=TrainConfig(batch_size=1), loss=LossConfig(gate="none")).validate()
    with pytest.raises(ConfigError, match="loss.schedule='cosine' is not one of constant, linear"):
        LossConfig(schedule="cosine").validate()


def test_linear_schedule_lowers_the_synthetic_weight_to_zero():
    constant, linear = LossConfig(weight=0.4), LossConfig(weight=0.4, schedule="linear")
    assert [scheduled_weight(constant, p) for p in (0.0, 0.5, 0.99)] == [0.4, 0.4, 0.4]
    assert [scheduled_weight(linear, p) for p in (0.0, 0.5, 0.75)] == pytest.approx([0.4, 0.2, 0.1])
    normal, synthetic = outputs([1.0]), outputs([0.1])
    mask = torch.ones(1, 1, 16, 16)
    cfg = LossConfig(form="mask", margin=0.1, gate="none", weight=0.4)
    full, terms = ssnf_loss(normal, synthetic, mask, cfg)
    half, half_terms = ssnf_loss(normal, synthetic, mask, cfg, weight=0.2)
    assert terms["weight"] == 0.4 and half_terms["weight"] == 0.2
    assert float((full - terms["normal"]).detach()) == pytest.approx(2 * float((half - half_terms["normal"]).detach()), rel=1e-5)
    assert ssnf_loss(normal, synthetic, mask, cfg, weight=0.0)[1]["synthetic"] == 0.0  # w 0: no synthetic term


def test_score_maps_rank_unlikely_positions_higher():
    z = torch.zeros(1, 4, 4, 4)
    z[0, :, 1, 2] = 3.0
    out = [(z, torch.zeros(1, 4, 4))]
    for kind in ("density", "fastflow", "z2", "nll"):
        m = position_maps(out, kind)[0][0]
        assert m[1, 2] > m[0, 0]
        assert int(m.argmax()) == 1 * 4 + 2
    assert float(position_maps(out, "density")[0][0, 0, 0]) == -1.0
    assert float(position_maps(out, "fastflow")[0][0, 0, 0]) == -1.0
    assert float(position_maps(out, "z2")[0][0, 1, 2]) == pytest.approx(4.5)


def test_maps_are_upsampled_averaged_smoothed_and_scored():
    z1 = torch.zeros(2, 4, 8, 8)
    z1[1, :, 4, 4] = 4.0
    z2 = torch.zeros(2, 4, 4, 4)
    out = [(z1, torch.zeros(2, 8, 8)), (z2, torch.zeros(2, 4, 4))]
    cfg = ScoringConfig(map="z2", image_score="max", smooth_sigma=0.0)
    maps = anomaly_maps(out, cfg, (32, 32))
    assert maps.shape == (2, 32, 32)
    assert float(maps[0].abs().max()) == 0.0 and float(maps[1].max()) > 0
    scores = image_scores(maps, cfg)
    assert scores[1] > scores[0]
    top = image_scores(maps, ScoringConfig(map="z2", image_score="topk", topk=0.5))
    assert float(top[1]) < float(scores[1])


def test_gaussian_blur_keeps_constants_and_mass():
    flat = torch.full((1, 20, 20), 3.0)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    spike = torch.zeros(1, 41, 41)
    spike[0, 20, 20] = 1.0
    blurred = gaussian_blur(spike, 3.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(blurred.max()) == pytest.approx(1 / (2 * math.pi * 9), rel=0.05)


def _val_maps(n: int = 40):
    """Validation-like maps for ``n`` images (half normal, half anomalous with a square defect) in which each
    kind is good at one thing: ``nll`` localizes, ``density`` ranks images, the others do neither."""
    masks = np.zeros((n, 16, 16), bool)
    masks[n // 2:, 4:8, 4:8] = True
    labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.random((n, 16, 16)).astype(np.float32))
    nll = noise * 0.1 + torch.from_numpy(masks.astype(np.float32))  # defects light up where they are
    nll[: n // 2, 12, 12] = 5.0  # ... but normal images have the brightest spot: its image AUROC is poor
    density = noise.clone()
    density[n // 2:, 0, 0] += 10.0  # anomalous images score highest, at the wrong place
    return {"density": density, "fastflow": noise, "z2": noise, "nll": nll}, labels, masks


def test_auto_scoring_chooses_pixel_map_and_image_score_separately_on_validation():
    maps, labels, masks = _val_maps()
    chosen, metrics = choose(maps, labels, masks, ScoringConfig())
    assert (chosen.map, chosen.image_map, chosen.image_score) == ("nll", "density", "max")
    assert chosen.resolved
    assert metrics["val_pixel_auroc"] == metrics["candidates"]["pixel/nll"] == max(
        v for k, v in metrics["candidates"].items() if k.startswith("pixel/"))
    assert metrics["val_image_auroc"] == 1.0 and metrics["candidates"]["image/nll/max"] < 1.0
    assert metrics["switch"] == 1.0  # nll, the prior, is the best pixel map
    # what is set stays set: only the open settings are chosen
    fixed, m = choose(maps, labels, masks, ScoringConfig(map="density", image_map="pixel"))
    assert (fixed.map, fixed.image_map) == ("density", "pixel")
    assert set(m["candidates"]) == {"pixel/density", "image/pixel/max", "image/pixel/topk"}
    # equal candidates: the prior pixel map (nll) and the first image candidate win
    same = {k: maps["z2"] for k in maps}
    tie = choose(same, labels, masks, ScoringConfig())[0]
    assert (tie.map, tie.image_map) == ("nll", "density")


def test_a_map_replaces_the_prior_only_when_validation_is_confident():
    """A lead within validation's own noise keeps ``nll``; a clear lead, or switch_confidence=0, takes the
    better map."""
    maps, labels, masks = _val_maps()
    rng = np.random.default_rng(1)
    base = torch.from_numpy(rng.random(masks.shape).astype(np.float32)) + 0.3 * torch.from_numpy(masks.astype(np.float32))
    hair = base.clone()
    hair[-1][masks[-1]] += 0.2  # one anomalous image a little better localised: better, not confidently
    clear = base + 2.0 * torch.from_numpy(masks.astype(np.float32))  # every defect much brighter
    for other, expected in ((hair, "nll"), (clear, "z2")):
        candidate = {"density": base, "fastflow": base, "z2": other, "nll": base}
        chosen, m = choose(candidate, labels, masks, ScoringConfig())
        assert m["candidates"]["pixel/z2"] > m["candidates"]["pixel/nll"]
        assert chosen.map == expected, m["switch"]
        assert (m["switch"] >= 0.95) == (expected == "z2")
        assert m["val_pixel_auroc"] == m["candidates"][f"pixel/{expected}"]
    candidate = {"density": base, "fastflow": base, "z2": hair, "nll": base}
    assert choose(candidate, labels, masks, ScoringConfig(switch_confidence=0.0))[0].map == "z2"


def test_bootstrap_pixel_auroc_matches_the_exact_one():
    maps, labels, masks = _val_maps()
    ones = np.ones((1, len(labels)))
    for kind in ("nll", "density"):
        exact = pixel_auroc(masks, maps[kind].numpy())
        assert bootstrap_pixel_auroc(maps[kind], masks, ones)[0] == pytest.approx(exact, abs=2e-3)
    # a resample that counts the last image twice and drops the first is the AUROC of those images
    twice = np.ones((1, len(labels)))
    twice[0, 0], twice[0, -1] = 0, 2
    idx = [*range(1, len(labels)), len(labels) - 1]
    exact = pixel_auroc(masks[idx], maps["nll"].numpy()[idx])
    assert bootstrap_pixel_auroc(maps["nll"], masks, twice)[0] == pytest.approx(exact, abs=2e-3)


def test_resolve_and_score_use_the_chosen_maps():
    cfg = ScoringConfig()
    with pytest.raises(ConfigError, match="never validated"):
        resolve(cfg, None)
    chosen = ScoringConfig(map="nll", image_map="density", image_score="max")
    assert resolve(cfg, chosen) == chosen
    assert resolve(ScoringConfig(map="z2"), chosen).map == "z2"  # a set value beats the model's choice
    z = torch.zeros(2, 4, 8, 8)
    z[1, :, 2, 2] = 3.0
    jac = torch.zeros(2, 8, 8)
    jac[0, 6, 6] = -40.0  # only the nll map (Jacobian included) sees this position of image 0
    out = [(z, jac)]
    resolved = dataclasses.replace(chosen, smooth_sigma=0.0)
    maps, scores = score(out, resolved, (8, 8))
    assert torch.equal(maps, anomaly_maps(out, resolved, (8, 8), "nll"))
    assert int(maps[0].flatten().argmax()) == 6 * 8 + 6
    expected = image_scores(anomaly_maps(out, resolved, (8, 8), "density"), resolved)
    assert torch.equal(scores, expected) and scores[1] > scores[0]
    with pytest.raises(ConfigError, match="must be resolved"):
        score(out, ScoringConfig(), (8, 8))
