"""Training end to end on generated demo data: reports, checkpoints, exact resume, caches, failures."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ssnf import prepared, training
from ssnf.backbones.extractor import FeatureExtractor
from ssnf.checkpoint import load_checkpoint
from ssnf.config import SSNFConfig
from ssnf.data.demo import DemoSpec, ensure_demo
from ssnf.errors import BackboneError, ConfigError, DataError
from ssnf.features import FeatureCache, load_images
from ssnf.synthesis import patches
from ssnf.synthesis.reference import COPIES
from ssnf.inference import Detector
from ssnf.config import with_overrides
from ssnf.training import TrainingDiverged, train

DEMO = DemoSpec(size=64, n_train=12, n_test_good=3, n_per_defect=2, seed=0)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    ensure_demo(root, ("washer",), DEMO)
    return root


@pytest.fixture
def tiny(demo_root, tmp_path, monkeypatch) -> SSNFConfig:
    monkeypatch.setenv("SSNF_CACHE_DIR", str(tmp_path / "cache"))
    return with_overrides(
        SSNFConfig(),
        data={"root": str(demo_root), "category": "washer", "image_size": 64, "val_fraction": 0.25},
        backbone={"pretrained": False},
        model={"hidden": 16, "couplings": 2, "heads": 2, "position": True, "pos_channels": 8},
        train={"epochs": 2, "batch_size": 4},
    )


def test_train_reports_each_epoch_and_checkpoints(tiny, tmp_path):
    reports = []
    result = train(tiny, out_dir=tmp_path / "run", callback=lambda report, model: reports.append(report),
                   progress=False)
    assert [r["epoch"] for r in reports] == [1, 2] and result.history == reports
    for r in reports:
        assert 0.0 <= r["val_image_auroc"] <= 1.0 and 0.0 <= r["val_pixel_auroc"] <= 1.0
        assert r["val_score"] == pytest.approx(0.5 * (r["val_image_auroc"] + r["val_pixel_auroc"]))
        assert 0.0 <= r["active"] <= 1.0
    assert (len(result.splits.train), len(result.splits.val)) == (9, 3)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt.epoch == 2 and ckpt.config == tiny
    # the scoring chosen on validation travels with the model, and is what the last report says
    assert ckpt.model.scoring == result.model.scoring and ckpt.model.scoring.resolved
    last = result.history[-1]
    assert (ckpt.model.scoring.map, last["val_map"]) == (last["val_map"], ckpt.model.scoring.map)
    assert last["val_pixel_auroc"] == last["val_candidates"][f"pixel/{last['val_map']}"]
    assert last["val_image_auroc"] == last["val_candidates"][f"image/{last['val_image_map']}/{last['val_image_score']}"]
    val_feats = [f[:2] for f in FeatureCache(tmp_path / "unused").features(
        result.model.extractor, result.splits.val[:2], load_images(result.splits.val[:2], 64), 64)]
    a = Detector.from_model(result.model, tiny, "cpu").predict_features(val_feats)
    b = Detector.from_model(ckpt.model, tiny, "cpu").predict_features(val_feats)
    assert (a.scores == b.scores).all() and (a.maps == b.maps).all()
    shipped = pickle.loads(pickle.dumps(result.model))  # what Ray does with a model
    c = Detector.from_model(shipped, tiny, "cpu").predict_features(val_feats)
    assert (a.scores == c.scores).all() and shipped.scoring == result.model.scoring


def test_resume_continues_exactly(tiny, tmp_path):
    straight = train(tiny, out_dir=tmp_path / "a", progress=False)
    one = with_overrides(tiny, train={"epochs": 1})
    train(one, out_dir=tmp_path / "b", progress=False)
    # the 1-epoch checkpoint was written with epochs=1; resuming needs the same config, so rewrite it
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    training.save_checkpoint(tmp_path / "b" / "checkpoint.pt", ckpt.model, tiny, ckpt.epoch, ckpt.history,
                             _optimizer_with(ckpt))
    resumed = train(tiny, out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.pt", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    sa, sb = straight.model.flows.state_dict(), resumed.model.flows.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-5)
    assert resumed.model.scoring == straight.model.scoring
    # resuming a finished run trains nothing and keeps the validated scoring
    again = train(tiny, out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.pt", progress=False)
    assert len(again.history) == 2 and again.model.scoring == straight.model.scoring


def _optimizer_with(ckpt):
    optimizer = torch.optim.Adam(ckpt.model.flow_parameters())
    optimizer.load_state_dict(ckpt.optimizer)
    return optimizer


def test_resume_refuses_another_config(tiny, tmp_path):
    train(with_overrides(tiny, train={"epochs": 1}), out_dir=tmp_path / "r", progress=False)
    with pytest.raises(Exception, match="different config"):
        train(tiny, resume=tmp_path / "r" / "checkpoint.pt", progress=False)


def test_weight_zero_never_synthesizes_and_minimises_plain_nll(tiny, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("w = 0 must not synthesize")

    monkeypatch.setattr(patches, "synthesize", forbidden)
    result = train(with_overrides(tiny, loss={"weight": 0.0}, train={"epochs": 3}), progress=False)
    losses = [h["loss"] for h in result.history]
    assert all(h["synthetic"] == 0.0 and h["loss"] == h["normal"] for h in result.history)
    assert losses[-1] < losses[0]  # maximum likelihood on normal features makes progress


@pytest.mark.parametrize("form", ["constrained", "hinge", "mask"])
def test_every_loss_form_and_the_synthetic_pool_train(tiny, form):
    anchored = train(with_overrides(tiny, loss={"form": form, "margin": 0.1}, train={"epochs": 1}), progress=False)
    assert anchored.history[0]["epoch"] == 1 and anchored.history[0]["anchor"] > 0.0  # the default holds the rest
    pooled = train(with_overrides(tiny, loss={"form": form, "margin": 0.1, "anchor": "none"},
                                  synthesis={"pool_size": 6}, train={"epochs": 1}), progress=False)
    assert pooled.history[0]["epoch"] == 1 and pooled.history[0]["anchor"] == 0.0


def test_feature_cache_is_reused_and_matches_a_fresh_extraction(tiny, monkeypatch):
    first = train(with_overrides(tiny, train={"epochs": 1}), progress=False)
    seen = []  # images through the backbone, per call
    real_forward = FeatureExtractor.forward
    monkeypatch.setattr(FeatureExtractor, "forward", lambda self, x: seen.append(len(x)) or real_forward(self, x))
    second = train(with_overrides(tiny, train={"epochs": 1}), progress=False)
    assert (first.timings["cache_misses"], second.timings["cache_hits"]) == (1, 1)
    cached_images = sum(seen)
    seen.clear()
    # feature_cache=false: the backbone runs on every normal batch (the baseline the cache is measured against)
    uncached = train(with_overrides(tiny, train={"epochs": 1, "feature_cache": False}), progress=False)
    assert sum(seen) - cached_images == 8  # 9 training images, batches of 4, the ragged one dropped
    assert uncached.history[0]["loss"] == pytest.approx(second.history[0]["loss"], rel=1e-4)


def test_prepared_data_are_shared_and_checked(tiny):
    training.seed_everything(tiny.train.seed)  # the random backbone train() builds, whatever ran before
    splits, model = training.prepare(tiny)
    data = prepared.prepare_data(tiny, model.extractor, splits)
    alone = train(with_overrides(tiny, train={"epochs": 1}), progress=False)
    shared = train(with_overrides(tiny, train={"epochs": 1}), data=data, progress=False)
    assert shared.history[0]["loss"] == pytest.approx(alone.history[0]["loss"], rel=1e-5)
    assert pickle.loads(pickle.dumps(data)).key == data.key  # it travels through Ray's object store
    with pytest.raises(Exception, match="prepared data were made for another"):
        train(with_overrides(tiny, data={"image_size": 128}), data=data, progress=False)


def test_portable_data_carry_the_extractor_and_the_test_split(tiny, monkeypatch):
    """What a sweep ships to a node without the dataset or the weights: the same training, the same test."""
    from ssnf.evaluate import evaluate

    splits, model = training.prepare(tiny)
    data = pickle.loads(pickle.dumps(prepared.prepare_data(tiny, model.extractor, splits, portable=True)))
    assert data.extractor is not None and len(data.test) == len(splits.test)

    def no_backbone(*args, **kwargs):
        raise AssertionError("built the backbone although the prepared data carry it")

    monkeypatch.setattr(training, "build_extractor", no_backbone)
    result = train(with_overrides(tiny, train={"epochs": 1}), data=data, progress=False)
    from_files = evaluate(result.model, tiny, splits.test)
    from_decoded = evaluate(result.model, tiny, data.test)
    np.testing.assert_array_equal(from_files.scores, from_decoded.scores)
    np.testing.assert_array_equal(from_files.masks, from_decoded.masks)
    assert from_files.metrics == from_decoded.metrics


def test_nan_loss_stops_with_a_reason(tiny, monkeypatch):
    real = training.ssnf_loss

    def poisoned(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        return loss * float("nan"), {**terms, "loss": float("nan")}

    monkeypatch.setattr(training, "ssnf_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1: lower train.lr"):
        train(tiny, progress=False)


@pytest.mark.parametrize("overrides,error,message", [
    ({"backbone": {"name": "resnet_nope"}}, BackboneError, "unknown backbone 'resnet_nope'"),
    ({"model": {"blocks": "conv,lstm"}}, ConfigError, "unknown block 'lstm'"),
    ({"model": {"heads": 3}}, ConfigError, "model.heads=3 does not divide model.hidden=16"),
    ({"data": {"val_fraction": 0.0}}, DataError, "no validation images"),
    ({"data": {"few_shot": 1}}, DataError, "at least 2 normal training images"),
    ({"data": {"image_size": 72}}, ConfigError, "not divisible by backbone stride 16"),
])
def test_bad_setups_fail_before_training(tiny, monkeypatch, overrides, error, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training must not start")

    monkeypatch.setattr(prepared, "load_images", no_training)
    with pytest.raises(error, match=message):
        train(with_overrides(tiny, **overrides), progress=False)


def test_novelty_gate_trains_and_reports_its_share(tiny):
    gated = with_overrides(tiny, loss={"gate": "novel", "gate_quantile": 0.5}, train={"epochs": 1})
    report = train(gated, progress=False).history[-1]
    # demo defects pasted from another washer: some of the covered positions are novel, not all
    assert 0.0 < report["novel"] < 1.0 and report["active"] <= report["novel"]
    assert report["gate_s"] > 0
    plain = train(with_overrides(gated, loss={"gate": "none"}), progress=False).history[-1]
    assert plain["novel"] == 1.0 and plain["gate_s"] == 0.0


def test_anchor_holds_the_rest_of_each_synthetic_image(tiny, monkeypatch):
    """``loss.anchor=unchanged``: each synthetic image is compared with the normal image it was made from
    (the same row of the batch) and the anchor term is reported; without it, nothing is held."""
    seen = []
    real = training.anchor_positions

    def spy(cfg, normal_feats, synthetic_feats):
        held = real(cfg, normal_feats, synthetic_feats)
        if held is not None:
            seen.append([float(h.float().mean()) for h in held])
        return held

    monkeypatch.setattr(training, "anchor_positions", spy)
    anchored = with_overrides(tiny, loss={"anchor": "unchanged"}, train={"epochs": 1})
    report = train(anchored, progress=False).history[-1]
    # most of a synthetic image is the untouched original; the patches are not
    assert seen and all(0.1 < share < 1.0 for shares in seen for share in shares)
    assert report["anchor"] > 0.0  # the flow's context (conv, attention) moves some of them, and a rise is held
    calls = len(seen)
    free = train(with_overrides(anchored, loss={"anchor": "none"}), progress=False).history[-1]
    assert free["anchor"] == 0.0 and len(seen) == calls


def test_linear_schedule_reports_the_falling_weight(tiny):
    history = train(with_overrides(tiny, loss={"schedule": "linear"}, train={"epochs": 2}), progress=False).history
    steps_weight = [h["weight"] for h in history]
    # mean w over each epoch's steps: below w in the first epoch, lower again in the second, never 0
    assert tiny.loss.weight > steps_weight[0] > steps_weight[1] > 0
    flat = train(with_overrides(tiny, train={"epochs": 1}), progress=False).history[-1]
    assert flat["weight"] == pytest.approx(tiny.loss.weight)


def test_object_placement_uses_the_category_s_objects(tiny, monkeypatch):
    """``foreground=object``: the washers' objects are found once and every patch lands on its image's
    washer; validation's reference defects lie on the washers too."""
    seen = []
    real = patches.synthesize

    def spy(target, source, rng, cfg, regions=None):
        image, mask = real(target, source, rng, cfg, regions)
        seen.append((regions, mask))
        return image, mask

    monkeypatch.setattr(patches, "synthesize", spy)
    cfg = with_overrides(tiny, synthesis={"object_aware": True, "foreground": "object", "min_object": 0.9,
                                          "blend": "paste"}, train={"epochs": 1})
    result = train(cfg, progress=False)
    assert seen and all(r is not None and r[0] is not None and r[1] is not None for r, _ in seen)
    on_object = [float(r[0][m].mean()) for r, m in seen if m.any()]
    assert min(on_object) > 0.5 and np.mean(on_object) > 0.8
    data = prepared.prepare_data(cfg, result.model.extractor, result.splits)
    images = load_images(result.splits.val, 64)
    regions = [prepared.object_regions(images)[i // COPIES] for i in range(len(images) * COPIES)]
    masks = data.validation.masks[len(images):]
    assert all(r is not None and not (m & ~r).any() for r, m in zip(regions, masks))
    # prepared data carry the training images' regions: a sweep's trials reuse them, nothing is recomputed
    assert all((a == b).all() for a, b in zip(data.regions, prepared.object_regions(data.train_images)))
    monkeypatch.setattr(prepared, "object_regions", None)
    seen.clear()
    train(cfg, progress=False, data=data)
    assert seen and all(r[0] is not None for r, _ in seen)


def test_checkpoints_from_before_the_gate_load_as_ungated(tiny, tmp_path):
    _, model = training.prepare(tiny, need_splits=False)
    path = training.save_checkpoint(tmp_path / "old.pt", model, tiny, 0, [])
    payload = torch.load(path, weights_only=True)
    for key in ("gate", "gate_quantile"):  # what a checkpoint written before the novelty gate holds
        del payload["config"]["loss"][key]
    torch.save(payload, path)
    assert tiny.loss.gate == "novel" and load_checkpoint(path).config.loss.gate == "none"


def test_checkpoints_from_before_the_anchor_load_unanchored(tiny, tmp_path):
    _, model = training.prepare(tiny, need_splits=False)
    path = training.save_checkpoint(tmp_path / "old.pt", model, tiny, 0, [])
    payload = torch.load(path, weights_only=True)
    for key in ("anchor", "anchor_tol"):  # what a checkpoint written before the anchor holds
        del payload["config"]["loss"][key]
    torch.save(payload, path)
    loss = load_checkpoint(path).config.loss
    assert tiny.loss.anchor == "unchanged" and loss.anchor == "none" and loss.anchor_tol == tiny.loss.anchor_tol


def test_feature_noise_reaches_the_flows_only(tiny, monkeypatch):
    """``train.feature_noise``: the flows train on noisy features (one draw shared by a normal image and its
    synthetic copy, so the anchor compares like with like); the gate and the anchor see the clean ones."""
    flow_inputs, anchor_inputs = [], []
    real_flow, real_anchor = training.SSNFModel.flow_features, training.anchor_positions

    def flow_spy(self, features):
        if self.training:  # one pass over [normal; synthetic]: record the two halves
            half = len(features[0]) // 2
            flow_inputs.append([f[:half].detach().clone() for f in features])
            flow_inputs.append([f[half:].detach().clone() for f in features])
        return real_flow(self, features)

    def anchor_spy(cfg, normal_feats, synthetic_feats):
        anchor_inputs.append((normal_feats[0].clone(), synthetic_feats[0].clone()))
        return real_anchor(cfg, normal_feats, synthetic_feats)

    monkeypatch.setattr(training.SSNFModel, "flow_features", flow_spy)
    monkeypatch.setattr(training, "anchor_positions", anchor_spy)
    one = {"epochs": 1, "val_every": 1}
    clean = train(with_overrides(tiny, train=one), progress=False)
    clean_inputs, flow_inputs[:], first_noisy_step = list(flow_inputs), [], len(anchor_inputs)
    noisy = train(with_overrides(tiny, train={**one, "feature_noise": 0.5}), progress=False)
    normal_clean, normal_noisy = clean_inputs[0][0], flow_inputs[0][0]
    synth_noisy = flow_inputs[1][0]
    clean_normal, clean_synth = anchor_inputs[first_noisy_step]
    # the same batch (the noise draws from torch, the batch order from numpy): clean at the anchor, noisy at the flow
    assert torch.equal(clean_normal, normal_clean)
    noise = normal_noisy - normal_clean
    # in units of each channel's spread over the training features (what the fixed norm divides by): N(0, 0.5^2)
    standardised = noise * noisy.model.flows[0].norm.log_scale.exp() / 0.5
    assert abs(float(standardised.mean())) < 0.05 and abs(float(standardised.std()) - 1.0) < 0.05
    torch.testing.assert_close(synth_noisy - clean_synth, noise)  # the synthetic copy got the same draw
    assert noisy.history[-1]["loss"] != clean.history[-1]["loss"]
    with pytest.raises(ConfigError, match="train.feature_noise=-1"):
        with_overrides(tiny, train={"feature_noise": -1.0}).validate()
