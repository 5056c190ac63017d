"""Robustness levers (issue 28): nuisance validation normals, training augmentation, the memory bank and the fused
maps, from their arithmetic through training, validation, the checkpoint, ``Detector`` and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssnf.checkpoint import load_checkpoint
from ssnf.config import SSNFConfig, ThresholdConfig, from_dict, merge, to_dict, with_overrides
from ssnf.errors import ConfigError
from ssnf.export import check_parity, example_images, export
from ssnf.inference import Detector
from ssnf.model.bank import CHUNK, MemoryBank, build_bank, greedy_coreset, patch_features
from ssnf.prepared import ValidationSet
from ssnf.scoring import Sources, anomaly_maps, candidates, fuse, fusion_stats
from ssnf.synthesis.nuisance import (COPIES, FAMILIES, Nuisance, NuisanceRanges, apply, augment_batch, draw,
                                     measure_ranges, nuisance_set)
from ssnf.threshold import fit_threshold
from ssnf.training import Batches, prepare, train
from ssnf.validation import validate
from tests.helpers.tiny import train_tiny


def _objects(n: int, size: int = 64, moved: float = 0.0, seed: int = 0) -> np.ndarray:
    """Grey discs on a dark background, each moved by up to ``moved`` of the side, with mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        cy, cx = size / 2 + rng.uniform(-moved, moved, 2) * size
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size / 4) ** 2) * 150.0 + 30
        out.append(np.clip(disc[..., None] + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8))
    return np.stack(out)


# -- nuisance transforms ---------------------------------------------------------------------------------------

def test_measured_ranges_follow_the_training_images_between_floor_and_cap():
    still, moving = _objects(12), _objects(12, moved=0.08, seed=1)
    aligned = measure_ranges(still, textured=False)
    assert aligned.shift == pytest.approx(0.01)  # the floor: these parts never move
    assert measure_ranges(moving, textured=False).shift == pytest.approx(0.03)  # they move a lot: the cap
    assert measure_ranges(still, textured=True).shift == pytest.approx(0.03)  # a texture has no position
    assert aligned.rotate < measure_ranges(moving, textured=False).rotate
    bright = still.astype(np.float32) * np.linspace(0.6, 1.4, 12)[:, None, None, None]
    assert measure_ranges(np.clip(bright, 0, 255).astype(np.uint8), False).brightness == pytest.approx(np.log(1.25))
    assert aligned.brightness == pytest.approx(np.log(1.08))


def test_each_transform_changes_the_image_and_validation_draws_one_at_a_time():
    image = _objects(1)[0]
    assert apply(image, Nuisance()) is image
    for params in ({"brightness": 0.1}, {"contrast": -0.1}, {"gamma": 0.1}, {"colour": 0.05}, {"blur": 0.8},
                   {"noise": 0.01}, {"shift_x": 0.03, "shift_y": 0.0}, {"rotate": 3.0}, {"scale": 0.04}):
        out = apply(image, Nuisance(params, seed=1))
        assert out.dtype == np.uint8 and out.shape == image.shape and np.abs(out.astype(int) - image).mean() > 0.1
    rng = np.random.default_rng(0)
    ranges = NuisanceRanges()
    for family in ("photometric", "full"):
        for _ in range(30):
            drawn = draw(rng, ranges, family, strong=True)
            (kind,) = {k.replace("_x", "").replace("_y", "") for k in drawn.params}  # exactly one transform
            value = abs(drawn.params.get(kind, drawn.params.get("shift_x", 0.0)))
            if kind != "shift":
                assert 0.5 * getattr(ranges, kind) - 1e-9 <= value <= getattr(ranges, kind) + 1e-9
            assert kind in FAMILIES[family] or kind == "shift"
    assert draw(rng, ranges, "none").params == {}


def test_nuisance_set_is_fixed_by_its_seed_and_augmentation_changes_only_what_it_draws():
    images = _objects(3)
    a, b = nuisance_set(images, 7, "full", NuisanceRanges()), nuisance_set(images, 7, "full", NuisanceRanges())
    assert len(a) == COPIES * len(images)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, nuisance_set(images, 8, "full", NuisanceRanges())))
    out, changed = augment_batch(images, np.random.default_rng(0), NuisanceRanges(), "photometric", 1.0)
    assert changed.all() and not any(np.array_equal(o, i) for o, i in zip(out, images))
    out, changed = augment_batch(images, np.random.default_rng(0), NuisanceRanges(), "geometric", 1e-9)
    assert not changed.any() and np.array_equal(out, images)


@pytest.mark.parametrize("key, value, match", [
    ("data.nuisance", "lighting", "data.nuisance='lighting' is not one of none, photometric, full"),
    ("train.augment", "flip", "train.augment='flip' is not one of"),
    ("train.augment_p", 0.0, "train.augment_p=0.0 must lie in"),
    ("bank.coreset", 0.0, "bank.coreset=0.0 must lie in"),
    ("bank.neighbourhood", 2, "bank.neighbourhood=2 must be a positive odd number"),
    ("scoring.map", "knn", "scoring map 'knn' needs the memory bank: set bank.enabled=true"),
    ("scoring.image_map", "fused50", "needs the memory bank"),
])
def test_a_lever_out_of_range_ends_in_one_line(key, value, match):
    with pytest.raises(ConfigError, match=match) as info:
        from_dict(SSNFConfig, merge(to_dict(SSNFConfig()), {key: value})).validate()
    assert "\n" not in str(info.value)


# -- memory bank -----------------------------------------------------------------------------------------------

def test_greedy_coreset_is_k_centre_and_the_bank_gives_exact_nearest_distances():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(300, 5, generator=g)
    chosen = greedy_coreset(points, 20, seed=3)
    assert len(set(chosen.tolist())) == 20
    dist = torch.cdist(points, points[chosen[:10]]).min(dim=1).values
    assert int(chosen[10]) == int(torch.argmax(dist))  # each next entry is the farthest from those chosen
    features = [torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 4, 3, 3, generator=g)]
    entries = torch.randn(CHUNK + 37, 7, generator=g)  # more than one chunk of entries
    bank = MemoryBank(entries, neighbourhood=3)
    patches = patch_features(features, 3).permute(0, 2, 3, 1).reshape(-1, 7)
    expected = torch.cdist(patches.double(), entries.double()).min(dim=1).values.reshape(2, 6, 6)
    torch.testing.assert_close(bank(features).double(), expected, atol=1e-4, rtol=1e-4)
    # a bank of training features scores those very features (nearly) zero where it keeps every position
    train_feats = [torch.randn(3, 4, 4, 4, generator=g)]
    full = build_bank(train_feats, from_dict(SSNFConfig, {"bank": {"coreset": 1.0}}).bank)
    assert full.size == 48 and float(full(train_feats).max()) < 1e-3


def test_a_bank_that_does_not_fit_is_refused_with_what_it_needs():
    feats = [torch.zeros(10, 8, 16, 16)]
    with pytest.raises(ConfigError, match=r"the memory bank needs 0\.\d+ GiB to build \(2560 positions x 8 features\)"):
        build_bank(feats, SSNFConfig().bank, memory_limit=1000)


def test_fused_map_standardises_both_maps_on_the_normals():
    nll, knn = torch.randn(4, 8, 8) * 3 + 1, torch.rand(4, 8, 8) * 10
    stats = fusion_stats(nll, knn)
    z = fuse(nll, knn, stats, 0.5)
    assert abs(float(z.mean())) < 1e-5
    only_knn = fuse(nll, knn, stats, 0.0)
    torch.testing.assert_close(only_knn, (knn - knn.mean()) / knn.double().std().float(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="needs the memory bank"):
        anomaly_maps(Sources(), SSNFConfig().scoring, (8, 8), "knn")
    assert "knn" not in candidates(SSNFConfig().scoring)[0]
    assert {"knn", "fused25", "fused50", "fused75"} <= set(candidates(SSNFConfig().scoring, bank=True)[0])


# -- through training, validation, the checkpoint, Detector and export -------------------------------------------

@pytest.fixture(scope="module")
def levered(tmp_path_factory):
    """A tiny run with every lever on: nuisance validation, full augmentation, feature noise, the memory bank."""
    root = tmp_path_factory.mktemp("levers")
    cfg, _, _ = train_tiny(root)
    cfg = with_overrides(cfg, data={"nuisance": "full"}, train={"augment": "full", "augment_p": 0.5,
                                                                "feature_noise": 0.1, "epochs": 2},
                         bank={"enabled": True, "coreset": 0.5})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSNF_CACHE_DIR", str(root / "cache"))
        result = train(cfg, out_dir=root / "levers", progress=False)
    return cfg, root / "levers" / "checkpoint.pt", result


def test_training_with_every_lever_reports_clean_and_nuisance_validation(levered):
    cfg, path, result = levered
    final = result.final
    for key in ("val_score", "val_score_clean", "val_image_auroc_clean", "val_pixel_auroc_clean", "val_nuisance_fpr",
                "val_nuisance_image_auroc", "augment_s"):
        assert np.isfinite(final[key]), key
    assert 0.0 <= final["val_nuisance_fpr"] <= 1.0
    assert {"pixel/knn", "pixel/fused50", "image/knn/max", "image/fused75/topk"} <= set(final["val_candidates"])
    ckpt = load_checkpoint(path)
    assert ckpt.model.bank is not None and ckpt.model.bank.size == result.model.bank.size
    torch.testing.assert_close(ckpt.model.bank.fusion, result.model.bank.fusion.cpu())
    assert not torch.equal(ckpt.model.bank.fusion, torch.tensor([0.0, 1.0, 0.0, 1.0]))  # set on validation
    # with a bank the backbone computes in float32 (distances between close patch features), the flows in bf16
    assert cfg.train.precision == "bf16" and cfg.feature_precision == "fp32"
    assert ckpt.model.extractor.precision == "fp32" and ckpt.model.precision == "bf16"
    assert set(ckpt.model.thresholds) == {"bf16", "fp32"}
    # the thresholds rest on the clean normals only (the nuisance normals are measured against them)
    threshold = ckpt.model.threshold
    normals = int(round(0.25 * 12))
    assert threshold is not None and threshold.n_normals == normals


def test_augmentation_leaves_the_cached_features_alone_and_recomputes_what_it_changed(levered, tmp_path):
    cfg, _, _ = levered
    cfg = with_overrides(cfg, train={"augment": "photometric", "augment_p": 1.0}, bank={"enabled": False})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSNF_CACHE_DIR", str(tmp_path / "cache"))
        from ssnf.prepared import prepare_data

        splits, model = prepare(cfg)
        data = prepare_data(cfg, model.extractor, splits)
    cached = [f.clone() for f in data.train_features]
    batches = Batches(cfg, model, data, "cpu")
    batch = batches.batch(np.arange(4), np.random.default_rng(0))
    assert all(torch.equal(a, b) for a, b in zip(cached, data.train_features)), "the cache must not change"
    assert not torch.allclose(batch.normal[0], cached[0][:4]), "augmented images' features come from the backbone"
    again = batches.batch(np.arange(4), np.random.default_rng(0))
    assert all(torch.equal(a, b) for a, b in zip(batch.normal, again.normal)), "one stream, one batch"


def test_nuisance_normals_that_are_flagged_lower_val_score():
    """The same maps, with the nuisance normals scored as the anomalies are: val_score falls, the clean one stays."""
    from ssnf.model.detector import SSNFModel

    class Fixed(SSNFModel):
        def __init__(self, nll):
            torch.nn.Module.__init__(self)
            self.bank, self.scoring, self.nll = None, None, nll

        def flow_features(self, features):
            idx = features[0][:, 0, 0, 0].long()
            z = self.nll[idx][:, None].expand(-1, 2, -1, -1).sqrt() * (2 ** 0.5)
            return [(z, torch.zeros(z.shape[0], *z.shape[2:]))]

    n, s = 12, 8
    labels = np.r_[np.zeros(4), np.ones(4), np.zeros(4)].astype(int)
    masks = np.zeros((n, s, s), bool)
    masks[4:8, 2:5, 2:5] = True
    nll = torch.zeros(n, s, s)
    nll[4:8, 2:5, 2:5] = 5.0
    feats = [torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, s, s).contiguous()]
    cfg = with_overrides(SSNFConfig(), scoring={"map": "nll", "image_map": "pixel", "image_score": "max",
                                                "smooth_sigma": 0.0}).scoring
    quiet = ValidationSet(feats, labels, masks, [], None, np.r_[np.zeros(8), np.ones(4)].astype(bool))
    calm = validate(Fixed(nll), quiet, cfg, s, "cpu", ThresholdConfig())
    shifted_nll = nll.clone()
    shifted_nll[8:, 2:5, 2:5] = 6.0  # the nuisance normals look like the defects
    flagged = validate(Fixed(shifted_nll), quiet, cfg, s, "cpu", ThresholdConfig())
    assert calm["val_score"] == pytest.approx(1.0) and calm["val_nuisance_fpr"] == 0.0
    assert flagged["val_score"] < calm["val_score"] - 0.2 and flagged["val_nuisance_fpr"] == 1.0
    assert flagged["val_score_clean"] == pytest.approx(calm["val_score_clean"]) == pytest.approx(1.0)


def _bank_detector(kind: str) -> Detector:
    cfg = with_overrides(SSNFConfig(), data={"image_size": 64}, backbone={"pretrained": False},
                         model={"hidden": 16, "couplings": 2, "heads": 2, "blocks": "conv", "attn_kv_size": 4},
                         scoring={"map": kind, "image_map": "pixel", "image_score": "topk", "smooth_sigma": 2.0},
                         train={"precision": "fp32"}, bank={"enabled": True, "coreset": 0.5})
    from ssnf.model.detector import SSNFModel

    model = SSNFModel.build(cfg.backbone, cfg.model).set_precision("fp32")
    torch.manual_seed(0)
    for flow in model.flows:
        for block in flow.blocks:
            torch.nn.init.normal_(block.subnet.out.weight, std=0.05)
    with torch.no_grad():
        feats = model.extractor(torch.from_numpy(example_images(64, 4, seed=3)).permute(0, 3, 1, 2) / 255.0)
    model.attach_bank(build_bank(feats, cfg.bank))
    model.bank.fusion.copy_(torch.tensor([0.5, 2.0, 3.0, 0.5]))
    detector = Detector.from_model(model, cfg)
    prediction = detector.predict(example_images(64, 6, seed=5))
    detector.threshold = fit_threshold(prediction.scores, np.zeros(0), prediction.maps, ThresholdConfig(fpr=0.2))
    return detector


@pytest.mark.parametrize("kind, fmt", [("knn", "torchscript"), ("fused50", "torchscript"), ("fused50", "onnx")])
def test_bank_maps_export_with_parity(kind, fmt, tmp_path):
    """Both bank kinds in TorchScript; ONNX on the fused map, which runs the bank and the flows both."""
    detector = _bank_detector(kind)
    path = export(detector, tmp_path / f"model.{fmt}", fmt)
    worst = check_parity(detector, path, atol=1e-4, rtol=1e-4)  # raises beyond 1e-4 + 1e-4 x value
    assert worst["scores"] < 1e-3 and worst["maps"] < 1e-3
    images = example_images(64, 3, seed=9)
    np.testing.assert_array_equal(Detector.load(path).predict(images).anomalous, detector.predict(images).anomalous)


def test_a_bank_kind_without_a_bank_is_refused_in_one_line():
    cfg = with_overrides(SSNFConfig(), data={"image_size": 64}, backbone={"pretrained": False},
                         model={"hidden": 16, "couplings": 2, "heads": 2, "blocks": "conv"},
                         scoring={"map": "knn", "image_map": "pixel", "image_score": "max"}, bank={"enabled": True})
    from ssnf.errors import SSNFError

    with pytest.raises(SSNFError, match="this model has none: train it with bank.enabled=true"):
        Detector.build(cfg)


def test_the_library_default_validates_with_graded_defects_and_nuisance_normals_and_old_checkpoints_keep_theirs(
        levered, tmp_path):
    assert (SSNFConfig().data.reference, SSNFConfig().data.nuisance) == ("graded", "full")
    _, path, _ = levered
    payload = torch.load(path, weights_only=True)
    for key in ("reference", "nuisance"):  # a checkpoint of a version before these keys
        del payload["config"]["data"][key]
    torch.save(payload, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt").config.data
    assert (old.reference, old.nuisance) == ("standard", "none"), "what those versions did, not today's default"
