"""``cost``: detectors cheaper to run, around ssnf's default, for a sweep with a time budget.

The levers that make a detector cheaper (``ssnf.cost`` measures every trial before it trains): the image size
(192-256 px) and the feature scales (8+16, 8 alone, 16 alone), the backbone (mobilenetv2 or efficientnet-lite0),
the coupling count (2-10) and the subnet width (32-128), a coarse scale with half the couplings and half the
width (``model.scale_couplings`` / ``scale_hidden``), the subnet's blocks (a 3x3 conv, its depthwise-separable
form ``dwconv``, a 1x1 conv, attention over keys and values pooled to 4-16 positions a side), and the memory
bank's size where it is on. Beside them the knobs that carried quality in the ``robust`` sweeps
(docs/benchmarks.md, issue 28): training augmentation, the self-supervised term on or off, the learning rate.

Run it with ``--objectives val_score,infer_ms`` (a Pareto front per category) and / or ``--max-ms``.
``cost.baseline`` is ssnf's default config: the sweep's trial 0, the point every cheaper pick is measured against.
"""

from __future__ import annotations

from search_spaces import register_space

BLOCKS = ["conv", "dwconv", "conv1", "attn"]
STRIDES = ["8,16", "8", "16"]  # categorical choices must be scalars: spelled, split into backbone.strides


@register_space("cost")
def cost(trial) -> dict:
    trial.suggest_categorical("backbone.name", ["mobilenetv2_100", "tf_efficientnet_lite0"])
    strides = trial.suggest_categorical("space.strides", STRIDES)
    trial.suggest_categorical("data.image_size", [192, 224, 256])
    depth = trial.suggest_int("space.depth", 1, 2)
    blocks = [trial.suggest_categorical(f"space.block{i}", BLOCKS) for i in range(depth)]
    if "attn" in blocks:
        trial.suggest_categorical("model.attn_kv_size", [4, 8, 16])
    hidden = trial.suggest_categorical("model.hidden", [32, 64, 128])
    couplings = trial.suggest_int("model.couplings", 2, 10, step=2)
    derived: dict = {"model.blocks": ",".join(blocks), "backbone.strides": [int(s) for s in strides.split(",")]}
    if "," in strides and trial.suggest_categorical("space.coarse", ["same", "half"]) == "half":
        derived["model.scale_couplings"] = [couplings, max(1, couplings // 2)]
        derived["model.scale_hidden"] = [hidden, max(16, hidden // 2)]
    if not trial.suggest_categorical("space.self_supervised", [True, False]):  # False: the w = 0 ablation
        derived["loss.weight"] = 0.0
    trial.suggest_float("train.lr", 3e-4, 3e-3, log=True)
    if trial.suggest_categorical("train.augment", ["none", "full"]) != "none":
        trial.suggest_float("train.augment_p", 0.25, 1.0)
    if trial.suggest_categorical("bank.enabled", [False, True]):
        trial.suggest_categorical("bank.max_entries", [1024, 4096, 16384])
    return derived


cost.baseline = {  # ssnf's defaults (ssnf/config.py); tests/test_spaces.py checks that they stay equal
    "backbone.name": "mobilenetv2_100", "space.strides": "8,16", "data.image_size": 256, "space.depth": 2,
    "space.block0": "conv", "space.block1": "attn", "model.attn_kv_size": 16, "model.hidden": 128,
    "model.couplings": 10, "space.coarse": "same", "space.self_supervised": True, "train.lr": 1e-3,
    "train.augment": "none", "bank.enabled": False,
}
