"""The config tree round-trips through plain values and dotted keys, and refuses bad values by name."""

from __future__ import annotations

import pytest

from ssnf.config import BackboneConfig, DataConfig, SSNFConfig, flatten, from_dict, to_dict, unflatten
from ssnf.errors import ConfigError


def test_round_trip_through_dict_and_dotted_keys():
    cfg = SSNFConfig(DataConfig(root="/d", category="tire", image_size=128, val_fraction=0.2),
                           BackboneConfig(name="tf_efficientnet_lite0", strides=(8, 16)))
    flat = flatten(to_dict(cfg))
    assert flat["data.image_size"] == 128 and flat["backbone.strides"] == [8, 16]
    assert from_dict(SSNFConfig, unflatten(flat)) == cfg
    assert from_dict(SSNFConfig, {}) == SSNFConfig()


def test_numbers_are_coerced_only_where_lossless():
    cfg = from_dict(DataConfig, {"image_size": 64.0, "val_fraction": 0, "seed": 3})
    assert cfg.image_size == 64 and isinstance(cfg.val_fraction, float)
    assert from_dict(BackboneConfig, {"strides": 8}).strides == (8,)


@pytest.mark.parametrize("data,message", [
    ({"data": {"imagesize": 3}}, r"unknown config key 'data.imagesize'"),
    ({"data": {"image_size": "big"}}, r"data.image_size must be an integer, got 'big'"),
    ({"data": {"image_size": 64.5}}, r"data.image_size must be an integer"),
    ({"backbone": {"pretrained": "yes"}}, r"backbone.pretrained must be true or false"),
    ({"backbone": {"strides": [8, "x"]}}, r"backbone.strides\[1\] must be an integer"),
    ({"data": {"layout": "coco"}}, r"data.layout='coco' is not one of"),
    ({"data": {"layout": 5}}, r"data.layout must be a string, got 5"),
    ({"model": {"norm": "batch"}}, r"model.norm='batch' is not one of none, fixed, actnorm"),
    ({"synthesis": {"blend": "alpha"}}, r"synthesis.blend='alpha' is not one of poisson, feather, paste"),
    ({"data": {"val_fraction": 1.0}}, r"data.val_fraction=1.0 must lie in \[0, 1\)"),
    ({"backbone": {"strides": [16, 8]}}, r"increasing and distinct"),
    ({"data": 5}, r"^data must be a mapping"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SSNFConfig, data)
