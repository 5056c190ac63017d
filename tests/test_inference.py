"""The one inference path (``ssnf.inference.Detector``), train.precision, and the small shared helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssnf.checkpoint import load_checkpoint
from ssnf.config import with_overrides
from ssnf.errors import ConfigError, DataError, SSNFError
from ssnf.evaluate import evaluate
from ssnf.features import FeatureCache, load_images
from ssnf.files import atomic_path
from ssnf.inference import Detector
from ssnf.loss import image_nll
from ssnf.model.flow import ScaleFlow
from ssnf.model.subnets import SubnetSpec
from ssnf.prepared import data_key
from ssnf.registry import Registry
from ssnf.training import prepare, train
from tests.helpers.tiny import train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny detector trained for one epoch on the demo washers, saved; (config, checkpoint path, result)."""
    return train_tiny(tmp_path_factory.mktemp("inference"))


def test_detector_on_files_arrays_and_evaluate_agree(trained, tmp_path):
    cfg, path, result = trained
    detector = Detector.load(path)
    assert detector.scoring.resolved and detector.scoring == load_checkpoint(path).model.scoring
    test = result.splits.test
    ev = evaluate(load_checkpoint(path).model, cfg, test)
    from_files = detector.predict_files([s.image for s in test])
    np.testing.assert_allclose(from_files.scores, ev.scores, rtol=1e-6)
    np.testing.assert_allclose(from_files.maps, ev.maps, rtol=1e-6)
    assert from_files.maps.shape == (len(test), 64, 64) and from_files.maps.dtype == np.float32
    # images of another size are resized by the detector exactly as the training images were, from arrays or files
    big = [Image.open(s.image).convert("RGB").resize((96, 80)) for s in test[:3]]
    for i, image in enumerate(big):
        image.save(tmp_path / f"big{i}.png")
    from_arrays = detector.predict([np.asarray(image) for image in big])
    assert from_arrays.maps.shape == (3, 64, 64)
    np.testing.assert_array_equal(from_arrays.scores, detector.predict_files(sorted(tmp_path.glob("big*.png"))).scores)
    assert not np.array_equal(from_arrays.scores, from_files.scores[:3])  # the up- and downscaling did happen
    empty = detector.predict(np.zeros((0, 64, 64, 3), np.uint8))
    assert empty.scores.shape == (0,) and empty.maps.shape == (0, 64, 64)


def test_detector_takes_grey_and_rgba_and_refuses_what_is_not_an_image(trained):
    detector = Detector.load(trained[1])
    grey = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    expected = detector.predict([rgb]).scores
    for image in (grey, grey[:, :, None], rgba):
        np.testing.assert_array_equal(detector.predict([image]).scores, expected)
    with pytest.raises(DataError, match=r"expected a uint8 or uint16 image \[H, W, 3\] \(RGB\).*got float32 \(20, 30\)"):
        detector.predict([np.zeros((20, 30), np.float32)])


def test_an_untrained_detector_needs_a_resolved_scoring(trained):
    cfg = trained[0]
    with pytest.raises(ConfigError, match="never validated"):
        Detector.build(cfg)
    fixed = with_overrides(cfg, scoring={"map": "nll", "image_map": "pixel", "image_score": "max"})
    out = Detector.build(fixed).predict(np.zeros((2, 64, 64, 3), np.uint8))
    assert out.scores.shape == (2,) and np.isfinite(out.maps).all()


def test_bf16_keeps_the_coupling_arithmetic_in_float32():
    """train.precision=bf16: the subnets run in bfloat16, the flow's outputs, log-determinants and inverse stay
    float32 and near the float32 model's."""
    torch.manual_seed(0)
    flow = ScaleFlow(8, SubnetSpec(hidden=16, blocks=("conv", "attn"), heads=2, kv_size=4), 3, 2.0, False, "none")
    for block in flow.blocks:  # leave the identity start, so that the subnets matter
        torch.nn.init.normal_(block.subnet.out.weight, std=0.1)
    x = torch.randn(4, 8, 8, 8)
    z32, jac32 = flow(x)
    for block in flow.blocks:
        block.subnet.precision = "bf16"
    z16, jac16 = flow(x)
    assert z16.dtype == jac16.dtype == torch.float32
    assert not torch.equal(z16, z32)  # bfloat16 did run
    torch.testing.assert_close(z16, z32, atol=0.05, rtol=0.05)
    torch.testing.assert_close(jac16, jac32, atol=0.05, rtol=0.05)
    torch.testing.assert_close(flow.inverse(z16), x, atol=1e-4, rtol=1e-4)  # the same subnet outputs both ways


def test_bf16_trains_and_has_its_own_features(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("SSNF_CACHE_DIR", str(tmp_path / "cache"))
    cfg = with_overrides(trained[0], train={"precision": "fp32"})
    bf16 = with_overrides(cfg, train={"precision": "bf16"})
    assert data_key(bf16) != data_key(cfg)
    # the training seed is not part of it: confirmation runs (new seeds) share the data and the validation set
    assert data_key(with_overrides(cfg, train={"seed": 7})) == data_key(cfg)
    assert data_key(with_overrides(cfg, data={"seed": 7})) != data_key(cfg)
    splits, model = prepare(bf16)
    assert model.extractor.precision == "bf16"
    cache = FeatureCache(tmp_path / "features")
    images = load_images(splits.train[:2], 64)
    key16 = cache.key(model.extractor, splits.train[:2], 64)
    f16 = model.extractor(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    model.set_precision("fp32")
    assert cache.key(model.extractor, splits.train[:2], 64) != key16
    f32 = model.extractor(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert all(a.dtype == torch.float32 and not torch.equal(a, b) for a, b in zip(f16, f32))
    result = train(bf16, out_dir=tmp_path / "run", progress=False)
    assert np.isfinite(result.final["loss"]) and 0.0 <= result.final["val_score"] <= 1.0
    loaded = load_checkpoint(tmp_path / "run" / "checkpoint.pt").model
    assert loaded.extractor.precision == "bf16"
    assert torch.isfinite(image_nll(loaded(torch.rand(1, 3, 64, 64)))).all()
    with pytest.raises(ConfigError, match="train.precision='fp16' is not one of fp32, bf16"):
        with_overrides(cfg, train={"precision": "fp16"}).validate()


def test_registry_refuses_a_name_twice_and_lists_the_known_ones():
    things = Registry("gadget")

    @things.register("a")
    def a():
        return 1

    assert things.register("a")(a) is a  # the same entry again (a module imported twice) is fine
    with pytest.raises(ValueError, match="gadget 'a' is registered twice"):
        things.register("a")(lambda: 2)
    assert things.lookup("a") is a
    with pytest.raises(ConfigError, match=r"model.thing: unknown gadget 'b'; known: a"):
        things.lookup("b", "model.thing")


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_atomic_path_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os
    import stat

    events = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def recorded_replace(src, dst):
        events.append("rename")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    with atomic_path(tmp_path / "file.txt") as tmp:
        tmp.write_text("one")
    folder = ["fsync folder"] if hasattr(os, "O_DIRECTORY") else []  # where the OS can open a folder
    assert events == ["fsync file", "rename", *folder] and (tmp_path / "file.txt").read_text() == "one"


def test_code_version_reads_packed_refs_and_worktrees(tmp_path):
    import shutil
    import subprocess

    from ssnf.results import code_version, git_commit

    if shutil.which("git") is None:
        pytest.skip("no git on this machine")

    def git(*args, cwd=tmp_path / "repo"):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                              capture_output=True, text=True).stdout.strip()

    (tmp_path / "repo").mkdir()
    git("init", "-q", "-b", "main")
    (tmp_path / "repo" / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-qm", "one")
    commit = git("rev-parse", "HEAD")
    assert git_commit(tmp_path / "repo") == commit and code_version(tmp_path / "repo").endswith(f"+{commit[:10]}")
    git("pack-refs", "--all")  # the branch's loose ref file is gone: only packed-refs has it
    assert not (tmp_path / "repo" / ".git" / "refs" / "heads" / "main").exists()
    assert git_commit(tmp_path / "repo") == commit
    git("worktree", "add", "-q", "-b", "other", str(tmp_path / "wt"))  # .git is a file naming the worktree's folder
    assert git_commit(tmp_path / "wt") == commit
    git("checkout", "-q", "--detach")
    assert git_commit(tmp_path / "repo") == commit
    assert git_commit(tmp_path) == "" and code_version(tmp_path) == code_version(tmp_path / "nowhere")


def test_slim_checkpoints_keep_the_backbone_s_fingerprint_only(trained, tmp_path):
    """``backbone=False`` (a sweep's trial checkpoints): no backbone weights in the file, loaded with the
    backbone at hand, and refused with another."""
    from ssnf.checkpoint import save_checkpoint
    from ssnf.backbones.extractor import build_extractor

    cfg, path, result = trained
    full = load_checkpoint(path)
    slim = save_checkpoint(tmp_path / "slim.pt", full.model, cfg, full.epoch, full.history, backbone=False)
    assert slim.stat().st_size < 0.5 * path.stat().st_size
    loaded = load_checkpoint(slim, extractor=full.model.extractor)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.flows.state_dict().values(),
                                                 full.model.flows.state_dict().values()))
    assert loaded.model.scoring == full.model.scoring and loaded.history == full.history
    other = build_extractor(cfg.backbone)  # the same random backbone in every process ...
    assert load_checkpoint(slim, extractor=other).epoch == full.epoch
    with torch.no_grad():  # ... and another one
        next(other.body.parameters()).add_(0.01)
    with pytest.raises(SSNFError, match=r"slim.pt is a slim checkpoint and the backbone at hand is not the one"):
        load_checkpoint(slim, extractor=other)


def test_cost_is_measured_through_the_predict_path_before_training():
    """``ssnf.cost``: parameters, GFLOP and ms/image at batch 1 and 32 of an untrained detector; an ``auto``
    scoring costs its costliest choice (with a bank: the fused map, flows and bank); fewer couplings cost less."""
    from ssnf.config import SSNFConfig, from_dict, merge, to_dict
    from ssnf.cost import costliest_scoring, measure_cost

    sets = {"data.image_size": 64, "backbone.pretrained": False, "model.hidden": 16, "model.blocks": "conv",
            "train.precision": "fp32"}
    small = from_dict(SSNFConfig, merge(to_dict(SSNFConfig()), {**sets, "model.couplings": 1}))
    large = from_dict(SSNFConfig, merge(to_dict(SSNFConfig()), {**sets, "model.couplings": 6}))
    banked = from_dict(SSNFConfig, merge(to_dict(SSNFConfig()), {**sets, "model.couplings": 1, "bank.enabled": True,
                                                                  "bank.max_entries": 512}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a sweep trial of one CPU measures (its CPU time)
    try:
        a, b, with_bank = (measure_cost(c, warmup=1, repeats=1) for c in (small, large, banked))
    finally:
        torch.set_num_threads(threads)
    for cost in (a, b):
        assert cost.params > 0 and cost.gflops > 0 and cost.infer_ms_b1 > 0 and cost.infer_ms_b32 > 0
        assert cost.threads == 1 and cost.bank_entries == 0
    assert b.params > a.params and b.gflops > a.gflops
    assert costliest_scoring(banked).scoring.map == "fused50" and costliest_scoring(small).scoring.map == "nll"
    assert with_bank.bank_entries == 512 and with_bank.gflops > a.gflops
