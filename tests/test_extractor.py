"""The frozen feature extractor: reported shapes are the real ones, it stays frozen, it pickles."""

from __future__ import annotations

import pickle

import pytest
import torch

from ssnf.backbones import build_extractor
from ssnf.config import BackboneConfig
from ssnf.errors import BackboneError, ConfigError

CASES = [
    ("mobilenetv2_100", (4, 8, 16)),
    ("tf_efficientnet_lite0", (8, 16, 32)),
    ("resnet18", (4, 8, 16, 32)),
]


def _random(name: str, strides: tuple[int, ...]):
    torch.manual_seed(0)
    return build_extractor(BackboneConfig(name=name, strides=strides, pretrained=False))


@pytest.mark.parametrize("name,strides", CASES)
def test_reported_channels_and_strides_match_the_outputs(name, strides):
    extractor = _random(name, strides)
    assert extractor.strides == strides
    images = torch.rand(2, 3, 64, 96)
    feats = extractor(images)
    assert len(feats) == len(strides)
    for f, c, s in zip(feats, extractor.channels, strides):
        assert tuple(f.shape) == (2, c, 64 // s, 96 // s)
    assert extractor.describe()["channels"] == list(extractor.channels)


def test_frozen_eval_no_grad_and_pickles():
    extractor = _random("mobilenetv2_100", (8, 16))
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training and not any(m.training for m in extractor.modules())
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    feats = extractor(images)
    assert not feats[0].requires_grad
    clone = pickle.loads(pickle.dumps(extractor))
    assert all(torch.equal(a, b) for a, b in zip(feats, clone(images)))


def test_normalisation_follows_the_backbone():
    lite = _random("tf_efficientnet_lite0", (8,))
    assert torch.allclose(lite.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    mobile = _random("mobilenetv2_100", (8,))
    assert torch.allclose(mobile.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_bad_names_strides_and_inputs():
    with pytest.raises(BackboneError, match=r"unknown backbone 'mobilenetv2_10' \(did you mean"):
        build_extractor(BackboneConfig(name="mobilenetv2_10", pretrained=False))
    with pytest.raises(BackboneError, match="no feature level at stride 64; its strides are 2, 4, 8, 16, 32"):
        build_extractor(BackboneConfig(strides=(8, 64), pretrained=False))
    with pytest.raises(ConfigError, match="increasing and distinct"):
        build_extractor(BackboneConfig(strides=(16, 8), pretrained=False))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        _random("mobilenetv2_100", (8,))(torch.rand(1, 1, 32, 32))
