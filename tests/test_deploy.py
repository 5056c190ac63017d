"""Deployment: thresholds from normals only, export with parity, ``ssnf predict`` / ``export`` / ``calibrate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ssnf.backends import file_kind
from ssnf.checkpoint import load_checkpoint
from ssnf.config import SSNFConfig, ThresholdConfig, to_dict, with_overrides
from ssnf.errors import ConfigError, DataError, SSNFError
from ssnf.evaluate import evaluate
from ssnf.export import check_parity, example_images, export
from ssnf.inference import Detector
from ssnf.model.subnets import BLOCKS
from ssnf.predict import read_map_png16
from ssnf.threshold import (MIN_EXCEEDANCES, Threshold, f1_threshold, fit_threshold, gumbel_quantile,
                            image_threshold, pixel_from_tail, pixel_tail)
from ssnf.training import train
from tests.helpers.cli import run_cli as _ssnf  # ssnf ARGS in this process (tests/test_cli.py: as a subprocess)
from tests.helpers.tiny import train_tiny


# -- thresholds ------------------------------------------------------------------------------------------------

def test_gumbel_tail_holds_the_requested_rate_where_the_sample_quantile_cannot():
    """30 normals, 1 % requested: the sample quantile is the maximum (about 1/31 of new normals exceed it);
    the fitted tail lands near 1 % on average over many draws of normals from a Gumbel-like law."""
    rng = np.random.default_rng(0)
    cfg = {m: ThresholdConfig(fpr=0.01, method=m) for m in ("gumbel", "empirical", "auto")}
    achieved = {m: [] for m in cfg}
    for _ in range(400):
        normals = rng.gumbel(0.3, 0.05, 30)
        for method, c in cfg.items():
            value, _ = image_threshold(normals, np.zeros(0), c)
            achieved[method].append(np.exp(-np.exp(-(value - 0.3) / 0.05)))  # the law's CDF at the threshold
    fpr = {m: 1 - np.mean(v) for m, v in achieved.items()}
    assert 0.005 < fpr["gumbel"] < 0.02
    assert fpr["empirical"] > 0.025  # the maximum of 30: about 1 / 31
    assert fpr["auto"] == fpr["gumbel"]  # 30 x 1 % < MIN_EXCEEDANCES normals beyond the quantile


def test_auto_reads_the_sample_quantile_once_enough_normals_lie_beyond_it():
    rng = np.random.default_rng(1)
    normals = rng.normal(0, 1, int(MIN_EXCEEDANCES / 0.05))
    value, used = image_threshold(normals, np.zeros(0), ThresholdConfig(fpr=0.05))
    assert used == "empirical" and value == np.quantile(normals, 0.95, method="higher")
    assert (normals > value).mean() <= 0.05 < (normals >= value).mean() + 1 / len(normals)  # the lowest such value
    assert gumbel_quantile(rng.gumbel(2.0, 0.5, 200_000), 0.99) == pytest.approx(2.0 - 0.5 * np.log(-np.log(0.99)),
                                                                                  rel=0.01)


def test_f1_threshold_separates_and_pixel_tail_interpolates():
    assert f1_threshold(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6])) == pytest.approx(0.4)
    assert f1_threshold(np.array([0.1, 0.55]), np.array([0.5, 0.6])) < 0.5  # both anomalies found, one false alarm
    values = np.random.default_rng(2).uniform(0, 1, 1_000_000)
    tail = pixel_tail(values)
    for fpr in (0.001, 0.01, 0.03, 0.2):
        assert pixel_from_tail(tail, fpr) == pytest.approx(1 - fpr, abs=2e-3)


def test_threshold_rereads_at_another_rate_and_round_trips():
    rng = np.random.default_rng(3)
    threshold = fit_threshold(rng.gumbel(0, 1, 40), rng.gumbel(4, 1, 20), rng.normal(0, 1, (4, 16, 16)),
                              ThresholdConfig())
    assert threshold.method == "gumbel" and threshold.n_normals == 40 and threshold.n_anomalies == 20
    assert "Gumbel tail fitted to 40 validation normals" in threshold.describe()
    looser = threshold.at(fpr=0.05, pixel_fpr=0.05)
    assert looser.image < threshold.image and looser.pixel < threshold.pixel and looser.fpr == 0.05
    assert threshold.at(method="f1").method == "f1" and "20 reference anomalies" in threshold.at(method="f1").describe()
    assert Threshold.from_dict(json.loads(json.dumps(threshold.to_dict()))) == threshold
    with pytest.raises(ConfigError, match=r"threshold.fpr=0.7 must lie in \[1e-6, 0.5\)"):
        threshold.at(fpr=0.7)
    with pytest.raises(ConfigError, match="threshold.method='best'"):
        ThresholdConfig(method="best").validate()


# -- a trained model ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained detector: (config, checkpoint path, result, data root)."""
    root = tmp_path_factory.mktemp("deploy")
    return (*train_tiny(root, n_train=16, n_test_good=4), root / "data")


def test_training_sets_the_threshold_on_validation_normals_and_test_reports_it(trained):
    cfg, path, result, _ = trained
    thresholds = load_checkpoint(path).model.thresholds
    assert set(thresholds) == {"bf16", "fp32"}  # the training precision's, and the one exported files use
    threshold = thresholds["bf16"]
    n_val = len(result.splits.val)
    assert threshold.n_normals == n_val and threshold.fpr == 0.01 and threshold.precision == "bf16"
    assert threshold.method == "gumbel" and len(threshold.normal_scores) == n_val
    deployed = Detector.load(path)  # what deploys computes in float32, as its exported files do
    assert deployed.backend.precision == "fp32" and deployed.threshold == thresholds["fp32"]
    detector = Detector.load(path, precision="bf16")
    assert detector.threshold == threshold and detector.threshold.scoring == to_dict(detector.scoring)
    assert thresholds["fp32"].normal_scores != threshold.normal_scores  # bf16 and fp32 scores differ
    # the normals it rests on are the validation normals' scores through the one inference path
    val_scores = detector.predict([s.image for s in result.splits.val]).scores
    np.testing.assert_allclose(sorted(val_scores), sorted(threshold.normal_scores), rtol=1e-5, atol=1e-6)
    ev = evaluate(detector.model, cfg, result.splits.test, precision="bf16")
    assert detector.model.precision == "bf16"  # evaluate restores the model's arithmetic
    labels = np.array([s.label for s in result.splits.test])
    assert ev.metrics["threshold_fpr"] == pytest.approx(np.mean(ev.scores[labels == 0] > threshold.image))
    assert ev.metrics["threshold_fnr"] == pytest.approx(np.mean(ev.scores[labels == 1] <= threshold.image))
    assert 0.0 <= ev.metrics["pixel_threshold_fpr"] <= 1.0
    prediction = detector.predict([s.image for s in result.splits.test])
    np.testing.assert_array_equal(prediction.anomalous, prediction.scores > threshold.image)
    np.testing.assert_array_equal(prediction.masks, prediction.maps > threshold.pixel)


def test_calibrate_rebuilds_the_same_threshold_from_the_validation_split(trained, tmp_path):
    _, path, _, _ = trained
    payload = torch.load(path, weights_only=True)
    original = payload["thresholds"]
    payload["thresholds"] = {}
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    assert Detector.load(old).threshold is None
    with pytest.raises(SSNFError, match="no threshold to re-read"):
        Detector.load(old).with_threshold(fpr=0.02)
    proc = _ssnf("calibrate", "--checkpoint", str(old))
    assert proc.returncode == 0, proc.stderr
    again = load_checkpoint(old).model.thresholds
    assert set(again) == set(original)
    for precision, threshold in again.items():
        assert threshold.image == pytest.approx(original[precision]["image"], rel=1e-5)
        assert threshold.pixel == pytest.approx(original[precision]["pixel"], rel=1e-5)
    proc = _ssnf("calibrate", "--checkpoint", str(old), "--fpr", "0.2", "--threshold-method", "empirical")
    assert proc.returncode == 0 and "at 0.2 FPR (the empirical quantile of" in proc.stdout
    assert load_checkpoint(old).config.threshold == ThresholdConfig(fpr=0.2, method="empirical")


# -- export --------------------------------------------------------------------------------------------------

def _untrained(blocks: str, model: dict | None = None, **scoring) -> Detector:
    """A small detector whose couplings are not the identity (their output layers perturbed), with a threshold."""
    cfg = with_overrides(SSNFConfig(), data={"image_size": 64}, backbone={"pretrained": False},
                         model={"hidden": 16, "couplings": 2, "heads": 2, "blocks": blocks, "attn_kv_size": 4,
                                **(model or {})},
                         scoring={"map": "nll", "image_map": "pixel", "image_score": "topk", **scoring},
                         train={"precision": "fp32"})
    detector = Detector.build(cfg)
    torch.manual_seed(0)
    for flow in detector.model.flows:
        for block in flow.blocks:
            torch.nn.init.normal_(block.subnet.out.weight, std=0.05)
    prediction = detector.predict(example_images(64, 6, seed=5))
    detector.threshold = fit_threshold(prediction.scores, np.zeros(0), prediction.maps, ThresholdConfig(fpr=0.2))
    return detector


# TorchScript per block kind (seconds each); ONNX once, on a subnet that stacks every kind (an ONNX export takes
# 20-35 s here, and one file with every block checks each kind's operators the same way), with per-scale
# couplings and widths (model.scale_couplings / scale_hidden: flows of different depth and width per scale)
PER_SCALE = {"scale_couplings": (2, 1), "scale_hidden": (16, 8)}


@pytest.mark.parametrize("fmt,blocks,model", [("torchscript", f"{b},{b}", None) for b in sorted(BLOCKS)]
                         + [("onnx", ",".join(sorted(BLOCKS)), PER_SCALE)])
def test_export_matches_pytorch_for_every_block_kind(blocks, fmt, model, tmp_path):
    detector = _untrained(blocks, model)
    path = export(detector, tmp_path / f"model.{fmt}", fmt)  # the export checks parity itself; again here, stated
    assert file_kind(path) == fmt
    images = np.concatenate([example_images(64, 3, seed=9), example_images(64, 2, seed=10)])
    worst = check_parity(detector, path, images=images, atol=1e-4, rtol=1e-4)  # maps and scores within 1e-4
    assert worst["scores"] < 1e-4 and worst["maps"] < 1e-4
    exported = Detector.load(path)
    assert exported.backend.name == fmt and exported.threshold == detector.threshold and exported.cfg == detector.cfg
    a, b = exported.predict(images), detector.predict(images)
    np.testing.assert_array_equal(a.anomalous, b.anomalous)  # identical verdicts
    # any batch size and image size: the exported file resizes inside (antialiased bilinear, as torch does)
    odd = np.random.default_rng(1).integers(0, 255, (1, 50, 90, 3), dtype=np.uint8)
    scores, maps = exported.run(odd)
    assert scores.shape == (1,) and maps.shape == (1, 64, 64)
    with pytest.raises(SSNFError, match="needs the PyTorch model"):
        export(exported, tmp_path / "again.onnx", "onnx")


@pytest.mark.parametrize("kind", ["density", "fastflow", "z2"])
def test_export_matches_pytorch_for_every_map_kind(kind, tmp_path):
    detector = _untrained("conv,attn", map=kind, image_score="max", smooth_sigma=2.0)
    path = export(detector, tmp_path / "model.pt", "torchscript")
    worst = check_parity(detector, path, atol=1e-4, rtol=1e-4)
    assert worst["scores"] < 1e-4 and worst["maps"] < 1e-4


def test_a_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import ssnf.export

    def mismatch(*args, **kwargs):
        raise SSNFError("exported file: scores differ from PyTorch")

    monkeypatch.setattr(ssnf.export, "check_parity", mismatch)
    with pytest.raises(SSNFError, match="scores differ"):
        export(_untrained("conv"), tmp_path / "model.pt", "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_unknown_format(tmp_path):
    with pytest.raises(SSNFError, match="export format 'tflite' is not one of onnx, torchscript"):
        export(_untrained("conv"), tmp_path / "m", "tflite")


# -- ssnf predict ------------------------------------------------------------------------------------------------

def _inputs(tmp_path, data_root):
    """A folder tree of test images at two sizes, a corrupt image, a text file; returns the folder."""
    folder = tmp_path / "line"
    (folder / "cam2").mkdir(parents=True)
    test = sorted((data_root / "washer" / "test").rglob("*.png"))
    for i, path in enumerate(test[:5]):
        image = Image.open(path).convert("RGB")
        if i % 2:
            image = image.resize((96, 80))
            image.convert("L").save(folder / "cam2" / f"grey{i}.png")  # a grey file: RGB inside the model
        else:
            image.save(folder / f"part{i}.png")
    (folder / "cam2" / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("shift log")
    return folder


def test_predict_on_a_folder_writes_maps_overlays_masks_and_one_table(trained, tmp_path):
    _, path, _, data_root = trained
    folder = _inputs(tmp_path, data_root)
    out = tmp_path / "out"
    proc = _ssnf("predict", "--checkpoint", str(path), str(folder), "--out", str(out), "--batch-size", "2")
    assert proc.returncode == 1, proc.stderr  # one file failed: the exit status says so, the rest went on
    assert "5 images scored" in proc.stdout and "1 failed, 1 skipped" in proc.stdout
    table = pd.read_parquet(out / "predictions.parquet")
    assert len(table) == 7 and (pd.read_csv(out / "predictions.csv")["path"] == table["path"]).all()
    failed = table[table.status == "failed"].iloc[0]
    assert failed.path.endswith("broken.png") and "cannot read image" in failed.error
    assert table[table.status == "skipped"].iloc[0].path.endswith("notes.txt")
    ok = table[table.status == "ok"]
    detector = Detector.load(path)
    expected = detector.predict(list(ok.path)).scores
    np.testing.assert_allclose(ok.score, expected, rtol=1e-5)
    assert (ok.verdict == np.where(ok.score > detector.threshold.image, "anomalous", "normal")).all()
    assert (ok.threshold == detector.threshold.image).all()
    for _, row in ok.iterrows():
        size = Image.open(row.path).size
        for column in ("map", "overlay", "mask"):
            assert Image.open(row[column]).size == size  # every output at the image's own size
        decoded = read_map_png16(row["map"])
        assert decoded.min() == pytest.approx(row.map_min, abs=1e-6) and decoded.max() == pytest.approx(row.map_max)
        mask = np.asarray(Image.open(row["mask"])) > 0
        assert mask.mean() == pytest.approx(row.anomalous_fraction)
    assert (out / "maps" / "cam2" / "grey1.png.png").is_file()  # outputs mirror the input tree, extensions kept
    run = json.loads((out / "run.json").read_text())
    assert run["ok"] == 5 and run["failed"] == 1 and run["threshold"]["n_normals"] == detector.threshold.n_normals

    # the same folder again: refused in one line, nothing overwritten
    before = (out / "predictions.parquet").stat().st_mtime_ns
    proc = _ssnf("predict", "--checkpoint", str(path), str(folder), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "holds another run's results (predictions.parquet" in proc.stderr
    assert (out / "predictions.parquet").stat().st_mtime_ns == before


def test_predict_models_folder_globs_npy_and_another_rate(trained, tmp_path):
    _, path, _, data_root = trained
    models = tmp_path / "models" / "washer"
    models.mkdir(parents=True)
    os.link(path, models / "checkpoint.pt")
    pattern = str(data_root / "washer" / "test" / "**" / "*.png")
    out = tmp_path / "glob"
    proc = _ssnf("predict", "--models", str(tmp_path / "models"), "--category", "washer", pattern, "--out", str(out),
                 "--maps", "npy", "--fpr", "0.3", "--no-overlays", "--quiet")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(out / "predictions.parquet")
    detector = Detector.load(path).with_threshold(fpr=0.3)
    assert len(table) == 12 and (table.threshold == detector.threshold.image).all() and (table.fpr == 0.3).all()
    assert table.overlay.isna().all() and np.load(table["map"][0]).dtype == np.float32
    proc = _ssnf("predict", "--models", str(tmp_path / "models"), "--category", "bolt", pattern, "--out",
                 str(tmp_path / "x"))
    assert proc.returncode == 2 and "no model for category 'bolt'" in proc.stderr and "washer" in proc.stderr


def test_predict_runs_an_exported_file_like_its_checkpoint(trained, tmp_path):
    _, path, _, data_root = trained
    onnx = tmp_path / "model.onnx"
    proc = _ssnf("export", "--checkpoint", str(path), "--format", "onnx", "--out", str(onnx))
    assert proc.returncode == 0, proc.stderr
    assert "checked against PyTorch" in proc.stdout
    images = str(data_root / "washer" / "test")
    for name, model in (("ckpt", path), ("onnx", onnx)):
        proc = _ssnf("predict", "--checkpoint", str(model), images, "--out", str(tmp_path / name), "--quiet",
                     "--maps", "none", "--no-overlays", "--no-masks")
        assert proc.returncode == 0, proc.stderr
    proc = _ssnf("predict", "--checkpoint", str(path), images, "--out", str(tmp_path / "bf16"), "--quiet",
                 "--maps", "none", "--no-overlays", "--no-masks", "--precision", "bf16")
    assert proc.returncode == 0, proc.stderr
    ckpt, exported, bf16 = (pd.read_parquet(tmp_path / n / "predictions.parquet") for n in ("ckpt", "onnx", "bf16"))
    # one model, one verdict: by default the bf16-trained checkpoint computes in float32, as its export does, with
    # the thresholds set on float32 scores; the same scores within 1e-3 relative and the same verdicts
    thresholds = load_checkpoint(path).model.thresholds
    assert (ckpt.threshold == thresholds["fp32"].image).all() and (exported.threshold == thresholds["fp32"].image).all()
    np.testing.assert_allclose(exported.score, ckpt.score, rtol=1e-3, atol=1e-6)
    assert (exported.verdict == ckpt.verdict).all()
    assert (exported.verdict == np.where(exported.score > thresholds["fp32"].image, "anomalous", "normal")).all()
    # --precision bf16: the training arithmetic, its own thresholds
    assert (bf16.threshold == thresholds["bf16"].image).all() and not np.allclose(bf16.score, ckpt.score, rtol=1e-3)
    runs = {n: json.loads((tmp_path / n / "run.json").read_text()) for n in ("ckpt", "onnx", "bf16")}
    assert runs["onnx"]["backend"] == "onnx" and [runs[n]["precision"] for n in runs] == ["fp32", "fp32", "bf16"]
    proc = _ssnf("predict", "--checkpoint", str(onnx), images, "--out", str(tmp_path / "x"), "--precision", "bf16")
    assert proc.returncode == 2 and "is an exported file: it computes in fp32, not bf16" in proc.stderr


def test_predict_refuses_bad_models_and_empty_inputs_in_one_line(trained, tmp_path):
    _, path, _, data_root = trained
    images = str(data_root / "washer" / "test")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    payload = torch.load(path, weights_only=True)
    payload["format"] = "ssnf-checkpoint/9"
    torch.save(payload, tmp_path / "future.pt")
    (tmp_path / "random.onnx").write_bytes(b"\x08\x07garbage")
    cases = [
        ((str(path), str(empty)), "no image files in"),
        ((str(tmp_path / "future.pt"), images), "has format ssnf-checkpoint/9, this ssnf reads ssnf-checkpoint/1"),
        ((str(tmp_path / "random.onnx"), images), "random.onnx"),
        ((str(path), str(tmp_path / "nowhere")), "does not exist"),
    ]
    (tmp_path / "taken").write_text("a file where the output folder would go")
    proc = _ssnf("predict", "--checkpoint", str(path), images, "--out", str(tmp_path / "taken"))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr
    for (model, inputs), message in cases:
        proc = _ssnf("predict", "--checkpoint", model, inputs, "--out", str(tmp_path / "o"))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_device_auto_falls_back_to_the_cpu_and_cuda_is_refused_where_absent(monkeypatch):
    from ssnf.backends import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", "checkpoint").type == "cpu" and pick_device("auto", "onnx").type == "cpu"
    with pytest.raises(SSNFError, match="--device cuda, but torch sees no CUDA device"):
        pick_device("cuda", "checkpoint")
    with pytest.raises(SSNFError, match="TorchScript file runs on the CPU"):
        pick_device("cuda", "torchscript")


def test_predict_keeps_apart_same_named_files_and_reports_a_folder_of_failures(trained, tmp_path):
    _, path, _, data_root = trained
    folder = tmp_path / "same"
    folder.mkdir()
    image = Image.open(sorted((data_root / "washer" / "test" / "good").glob("*.png"))[0]).convert("L")
    image.save(folder / "a.png")
    image.save(folder / "a.jpg", quality=60)
    deep = np.asarray(image, np.uint16) * 257  # the same grey levels in a 16-bit file
    Image.fromarray(deep).save(folder / "a.tif")
    out = tmp_path / "out"
    proc = _ssnf("predict", "--checkpoint", str(path), str(folder), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(out / "predictions.parquet")
    assert len(set(table["map"])) == 3 and (out / "maps" / "a.jpg.png").is_file()
    scores = dict(zip(table.path.map(lambda p: p.rsplit(".", 1)[1]), table.score))
    assert scores["png"] == pytest.approx(scores["tif"], abs=1e-6)  # 16-bit levels scaled as 8-bit ones
    detector = Detector.load(path)
    assert detector.predict([deep]).scores[0] == pytest.approx(scores["png"], abs=1e-6)
    with pytest.raises(DataError, match=r"must be \[N, H, W, C\], got \(64, 64, 3\)"):
        detector.predict(np.asarray(image.convert("RGB")))

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("x.png", "y.jpg"):
        (broken / name).write_bytes(b"\x89PNG truncated")
    proc = _ssnf("predict", "--checkpoint", str(path), str(broken), "--out", str(tmp_path / "b"), "--quiet")
    assert proc.returncode == 1 and "0 images scored" in proc.stdout
    table = pd.read_parquet(tmp_path / "b" / "predictions.parquet")
    assert list(table.status) == ["failed", "failed"] and table.error.str.contains("cannot read image").all()


def test_predict_does_not_read_its_own_output_and_evaluate_skips_a_foreign_scoring(trained, tmp_path):
    cfg, path, result, data_root = trained
    folder = tmp_path / "line"
    folder.mkdir()
    for p in sorted((data_root / "washer" / "test" / "good").glob("*.png"))[:2]:
        Image.open(p).save(folder / p.name)
    for run in ("r1", "r2"):
        proc = _ssnf("predict", "--checkpoint", str(path), str(folder), "--out", str(folder / run), "--quiet")
        assert proc.returncode == 0 and "2 images scored" in proc.stdout, proc.stdout + proc.stderr
    detector = Detector.load(path)
    ev = evaluate(detector.model, with_overrides(cfg, scoring={"map": "z2", "image_map": "pixel",
                                                             "image_score": "max"}), result.splits.test)
    assert "threshold_fpr" not in ev.metrics and ev.threshold is None


def test_one_validation_normal_is_refused_before_training(trained, monkeypatch, tmp_path):
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits

    cfg = with_overrides(trained[0], data={"val_fraction": 0.05})
    assert len(make_splits(load_index(cfg.data), cfg.data).val) == 1
    monkeypatch.setenv("SSNF_CACHE_DIR", str(tmp_path / "cache"))
    assert train(cfg, progress=False, thresholds=False).model.thresholds == {}  # a sweep trial needs none
    steps = []
    monkeypatch.setattr("ssnf.training.step_loss", lambda *a, **k: steps.append(1))
    with pytest.raises(DataError, match="1 validation normal for washer: the thresholds need at least 2"):
        train(cfg, progress=False)
    assert not steps


def test_make_models_trains_every_selected_category_then_predict_by_category(trained, tmp_path):
    """Item 5 of the deployment: best/<category>.yaml -> make models -> ssnf predict --models --category."""
    import shutil

    import yaml

    cfg, _, _, data_root = trained
    best = tmp_path / "best"
    best.mkdir()
    chosen = to_dict(with_overrides(cfg, threshold={"fpr": 0.3, "pixel_fpr": 0.3}))  # 16 normals can promise it
    (best / "washer.yaml").write_text("# chosen by analysis select\n" + yaml.safe_dump(chosen))
    calibration = tmp_path / "line"
    calibration.mkdir()
    (calibration / "washer").symlink_to(data_root / "washer" / "train" / "good")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on this machine")
    env = {**os.environ, "SSNF_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([make, "-s", "-C", repo, "models", f"BEST={best}", f"MODELS={tmp_path / 'models'}",
                           f"VENV={os.path.dirname(os.path.dirname(sys.executable))}", f"CALIBRATION={calibration}"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    threshold = load_checkpoint(tmp_path / "models" / "washer" / "checkpoint.pt").model.thresholds["fp32"]
    assert (threshold.source, threshold.method, threshold.n_normals) == ("calibration", "conformal", 16)
    proc = _ssnf("predict", "--models", str(tmp_path / "models"), "--category", "washer",
                 str(data_root / "washer" / "test" / "good"), "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 0 and "images scored" in proc.stdout, proc.stderr
    proc = subprocess.run([make, "-s", "-C", repo, "models", f"BEST={tmp_path / 'none'}"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no " in proc.stderr and "analysis select" in proc.stderr
