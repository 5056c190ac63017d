"""Thresholds a line can trust: conformal calibration on the line's good parts, and the drift alarm."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ssnf.checkpoint import load_checkpoint
from ssnf.config import ThresholdConfig
from ssnf.data.demo import DemoSpec, ensure_demo
from ssnf.drift import check, flagged_test
from ssnf.errors import ConfigError
from ssnf.inference import Detector
from ssnf.threshold import (best_promise, conformal_rank, fit_threshold, image_threshold, normals_needed,
                            pixel_rate)
from tests.helpers.cli import run_cli as _ssnf
from tests.helpers.tiny import train_tiny

# -- the promise ---------------------------------------------------------------------------------------------------


def test_the_conformal_threshold_keeps_its_promise_and_no_lower_rank_would():
    """Over many calibration sets drawn from one law, the share whose threshold lets more than ``fpr`` of new
    normals through stays under ``delta``; the rank below it would break the promise."""
    rng = np.random.default_rng(0)
    n, fpr, delta = 120, 0.05, 0.1
    cfg = ThresholdConfig(fpr=fpr, method="conformal", delta=delta)
    k = conformal_rank(n, fpr, delta)
    broken, broken_below = [], []
    for _ in range(4000):
        normals = rng.uniform(0, 1, n)  # the true FPR of a threshold t is 1 - t
        value, used = image_threshold(normals, np.zeros(0), cfg)
        assert used == "conformal" and value == np.sort(normals)[k - 1]
        broken.append(1 - value > fpr)
        broken_below.append(1 - np.sort(normals)[k - 2] > fpr)
    assert np.mean(broken) <= delta + 0.015  # binomial noise of 4000 draws: sd 0.005
    assert np.mean(broken_below) > delta  # k is the smallest rank that keeps it


def test_too_few_normals_are_refused_in_one_line_with_what_they_can_promise():
    assert normals_needed(0.01, 0.05) == 299 and normals_needed(0.05, 0.05) == 59
    assert conformal_rank(59, 0.05, 0.05) == 59 and conformal_rank(58, 0.05, 0.05) is None
    assert best_promise(12, 0.05) == pytest.approx(0.2209, abs=1e-4)
    with pytest.raises(ConfigError) as err:
        image_threshold(np.arange(60.0), np.zeros(0), ThresholdConfig(method="conformal"), "calibration")
    text = str(err.value)
    assert "\n" not in text and "60 calibration normals can promise an image FPR of at best 4.87 %" in text
    assert "(that needs 299)" in text and "pixel FPR of at best 1.64 %" in text and "(that needs 99)" in text
    assert "--threshold-method auto" in text


def test_the_pixel_threshold_holds_the_expected_share_where_pixels_are_correlated():
    """Each image shifts all its pixels together (a lighting change per part): the pooled pixel quantile of a few
    images misses the requested share, conformal risk control over images holds it on average."""
    rng = np.random.default_rng(1)
    n, rate = 40, 0.05
    assert pixel_rate(n, rate) == pytest.approx((41 * 0.05 - 1) / 40)
    cfg = ThresholdConfig(fpr=0.3, pixel_fpr=rate, method="conformal", delta=0.3)
    new_share, pooled_share = [], []
    for _ in range(300):
        maps = rng.normal(0, 1, (n, 8, 8)) + rng.normal(0, 1.5, (n, 1, 1))
        threshold = fit_threshold(rng.normal(size=n), np.zeros(0), maps, cfg)
        fresh = rng.normal(0, 1, (200, 8, 8)) + rng.normal(0, 1.5, (200, 1, 1))
        new_share.append(np.mean(fresh > threshold.pixel))
        pooled_share.append(np.mean(fresh > np.quantile(maps, 1 - rate)))
    assert np.mean(new_share) <= rate + 0.003
    assert np.mean(pooled_share) > np.mean(new_share)


# -- the drift alarm -----------------------------------------------------------------------------------------------


def _calibrated(rng, n=200):
    cfg = ThresholdConfig(fpr=0.05, pixel_fpr=0.05, method="conformal")
    stats = {"brightness": rng.normal(0.5, 0.05, n), "contrast": rng.normal(0.2, 0.02, n)}
    return fit_threshold(rng.gumbel(0, 1, n), np.zeros(0), rng.normal(size=(n, 4, 4)), cfg, stats=stats,
                         source="calibration")


def test_the_drift_alarm_rarely_fires_on_good_parts_and_fires_on_a_darker_session():
    rng = np.random.default_rng(2)
    fired = []
    for _ in range(300):
        threshold = _calibrated(rng)
        m = 100
        same = {"brightness": rng.normal(0.5, 0.05, m), "contrast": rng.normal(0.2, 0.02, m)}
        fired.append(check(threshold, rng.gumbel(0, 1, m), same).fired)
    assert np.mean(fired) <= 0.03  # level 0.01 over all tests, plus the chance the threshold itself is loose
    darker = {"brightness": rng.normal(0.42, 0.05, 60), "contrast": rng.normal(0.2, 0.02, 60)}
    report = check(threshold, rng.gumbel(0, 1, 60), darker)
    assert report.fired and [t.name for t in report.tests if t.p < 0.01 / 4] == ["brightness"]
    lines = report.lines()
    assert lines[0].startswith("DRIFT ALARM: brightness moved: median 0.4") and "recalibrate" in lines[-1]
    same = {"brightness": rng.normal(0.5, 0.05, 60), "contrast": rng.normal(0.2, 0.02, 60)}
    shifted = check(threshold, rng.gumbel(3.0, 1, 60), same)  # the parts score higher, the pictures look alike
    flagged = next(t for t in shifted.tests if t.name == "flagged")
    assert shifted.fired and flagged.p < 1e-4
    assert f"{int(flagged.run)} of 60 images over the threshold; " in " ".join(shifted.lines())
    few = check(threshold, rng.gumbel(0, 1, 5))
    assert not few.fired and "needs at least 10" in few.lines()[0]


def test_the_flagged_count_follows_the_beta_binomial_law_of_exchangeable_parts():
    """Threshold at the maximum of n normals: a new good part lies above it with probability 1 / (n + 1)."""
    rng = np.random.default_rng(3)
    n, m = 30, 50
    counts = []
    for _ in range(3000):
        normals = rng.normal(size=n)
        test = flagged_test(normals, normals.max(), rng.normal(size=m))
        counts.append(test.run)
    assert test.reference == pytest.approx(m / (n + 1))
    assert np.mean(counts) == pytest.approx(m / (n + 1), rel=0.08)
    p_values = [flagged_test(normals, normals.max(), rng.normal(size=m)).p for _ in range(2000)
                for normals in [rng.normal(size=n)]]
    assert np.mean(np.array(p_values) < 0.05) <= 0.05 + 0.012  # valid: not more false alarms than the level


# -- the commands --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A tiny trained detector and a folder of 70 good parts from the same generator, another seed."""
    root = tmp_path_factory.mktemp("calibration")
    cfg, path, _ = train_tiny(root, n_train=16, n_test_good=4)
    ensure_demo(root / "line", ("washer",), DemoSpec(size=64, n_train=70, n_test_good=24, n_per_defect=1, seed=5))
    return path, root / "line" / "washer"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_on_the_line_s_normals_promises_and_predict_reports_it(line, tmp_path):
    path, washer = line
    ckpt = tmp_path / "checkpoint.pt"
    shutil.copy(path, ckpt)
    normals = tmp_path / "normals"
    shutil.copytree(washer / "train" / "good", normals)
    (normals / "broken.png").write_bytes(b"not a png")
    proc = _ssnf("calibrate", "--checkpoint", str(ckpt), "--normals", str(normals), "--fpr", "0.05",
                 "--pixel-fpr", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "promised: image FPR <= 5 % with probability >= 95 %, pixel FPR <= 5 % in expectation" in proc.stdout
    assert "left out 1 unreadable file(s), e.g. " in proc.stdout and "broken.png" in proc.stdout
    thresholds = load_checkpoint(ckpt).model.thresholds
    assert set(thresholds) == {"bf16", "fp32"}
    for threshold in thresholds.values():
        assert (threshold.source, threshold.n_normals, threshold.excluded, threshold.method) == \
            ("calibration", 70, 1, "conformal")
        assert threshold.rank == 70 and threshold.image == max(threshold.normal_scores)
        assert threshold.channels == "colour" and len(threshold.brightness) == 70
    # the good parts of the same line: no alarm; predict prints and keeps the promise
    out = tmp_path / "good"
    proc = _ssnf("predict", "--checkpoint", str(ckpt), str(washer / "test" / "good"), "--out", str(out), "--quiet",
                 "--maps", "none", "--no-overlays")
    assert proc.returncode == 0, proc.stderr
    assert "promised: image FPR <= 5 %" in proc.stdout and "24 images look like the calibration normals" in proc.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["threshold"]["source"] == "calibration" and run["threshold"]["delta"] == 0.05
    assert run["drift"]["fired"] is False and len(run["drift"]["tests"]) == 5
    # the same parts in a darker session: the alarm fires, on the terminal and in run.json
    dark = tmp_path / "dark"
    dark.mkdir()
    for image in sorted((washer / "test" / "good").iterdir()):
        pixels = np.asarray(Image.open(image).convert("RGB"), np.float32) * 0.6
        Image.fromarray(pixels.astype(np.uint8)).save(dark / image.name)
    proc = _ssnf("predict", "--checkpoint", str(ckpt), str(dark), "--out", str(tmp_path / "d"), "--quiet",
                 "--maps", "none", "--no-overlays", "--no-masks")
    assert proc.returncode == 0 and "DRIFT ALARM: brightness moved" in proc.stderr
    assert json.loads((tmp_path / "d" / "run.json").read_text())["drift"]["fired"] is True
    # an exported file carries the calibration and decides the same
    onnx = tmp_path / "model.torchscript"
    assert _ssnf("export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(onnx)).returncode == 0
    exported = Detector.load(onnx)
    assert exported.threshold == thresholds["fp32"] and exported.threshold.promise()
    proc = _ssnf("predict", "--checkpoint", str(onnx), str(dark), "--out", str(tmp_path / "e"), "--quiet",
                 "--maps", "none", "--no-overlays", "--no-masks")
    ckpt_rows, file_rows = (pd.read_parquet(tmp_path / n / "predictions.parquet") for n in ("d", "e"))
    np.testing.assert_allclose(file_rows.score, ckpt_rows.score, rtol=1e-3)
    assert (file_rows.verdict == ckpt_rows.verdict).all() and "DRIFT ALARM" in proc.stderr


def test_bad_normals_are_refused_in_one_line_and_the_checkpoint_is_left_as_it_was(line, tmp_path, monkeypatch):
    path, washer = line
    ckpt = tmp_path / "checkpoint.pt"
    shutil.copy(path, ckpt)
    before = _digest(ckpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.png").write_bytes(b"garbage")
    mixed = tmp_path / "mixed"
    shutil.copytree(washer / "train" / "good", mixed)
    Image.new("L", (64, 64), 128).save(mixed / "grey.png")
    good = str(washer / "train" / "good")
    cases = [
        ((str(empty),), "no image files in"),
        ((str(broken),), "none of the 3 image files in"),
        ((str(mixed),), "mix grey and colour images (1 grey, 70 colour; e.g. "),
        ((good,), "70 calibration normals can promise an image FPR of at best"),  # 1 % asked: 299 needed
        ((good, "--fpr", "0"), "threshold.fpr=0.0 must lie in [1e-6, 0.5)"),
        ((good, "--fpr", "0.05", "--pixel-fpr", "0.05", "--delta", "0.9"), "threshold.delta=0.9 must lie in"),
        ((good, "--threshold-method", "f1"), "f1 needs the validation reference anomalies"),
        ((str(tmp_path / "nowhere"),), "does not exist"),
    ]
    for extra, message in cases:
        proc = _ssnf("calibrate", "--checkpoint", str(ckpt), "--normals", *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert proc.stderr.count("\n") == 1
    monkeypatch.setattr("ssnf.calibration.os.access", lambda *a: False)  # root reads every folder: simulate one
    proc = _ssnf("calibrate", "--checkpoint", str(ckpt), "--normals", good)
    assert proc.returncode == 2 and "cannot be read (permission denied)" in proc.stderr
    monkeypatch.undo()
    assert _digest(ckpt) == before
    # a request these normals cannot promise, set without a promise when asked
    proc = _ssnf("calibrate", "--checkpoint", str(ckpt), "--normals", good, "--threshold-method", "auto")
    assert proc.returncode == 0 and "no promise" in proc.stdout
    assert load_checkpoint(ckpt).model.thresholds["fp32"].source == "calibration"
    # a model without calibration normals, asked for the drift alarm
    old = load_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    for t in payload["thresholds"].values():
        t["normal_scores"] = []
    bare = tmp_path / "bare.pt"
    torch.save(payload, bare)
    proc = _ssnf("predict", "--checkpoint", str(bare), good, "--out", str(tmp_path / "p"), "--drift", "on")
    assert proc.returncode == 2 and "keeps no calibration normals to compare with" in proc.stderr
    proc = _ssnf("predict", "--checkpoint", str(ckpt), good, "--out", str(tmp_path / "p"), "--alarm-level", "2")
    assert proc.returncode == 2 and "--alarm-level 2.0 must lie in (0, 1)" in proc.stderr
    assert not (tmp_path / "p").exists() and old.model.thresholds


def test_train_with_calibration_normals_refuses_too_few_before_training(line, tmp_path):
    path, washer = line
    data = path.parent.parent / "data"
    out = tmp_path / "run"
    base = ("train", "--data-root", str(data), "--category", "washer", "--out", str(out), "--quiet", "--no-test",
            "--set", "data.image_size=64", "--set", "backbone.pretrained=false", "--set", "model.hidden=16",
            "--set", "model.couplings=2", "--set", "model.heads=2", "--set", "train.epochs=1",
            "--set", "train.batch_size=4", "--set", "data.val_fraction=0.25")
    proc = _ssnf(*base, "--calibration-normals", str(washer / "test" / "good"))
    assert proc.returncode == 2 and "24 calibration normals can promise" in proc.stderr
    assert not out.exists()  # refused before anything was written
    proc = _ssnf(*base, "--set", "threshold.fpr=0.05", "--set", "threshold.pixel_fpr=0.05",
                 "--calibration-normals", str(washer / "train" / "good"))
    assert proc.returncode == 0, proc.stderr
    threshold = load_checkpoint(out / "checkpoint.pt").model.thresholds["fp32"]
    assert threshold.source == "calibration" and threshold.method == "conformal" and threshold.n_normals == 70
    assert json.loads((out / "metrics.json").read_text())["thresholds"]["fp32"]["source"] == "calibration"
