"""``robust``: the robustness levers around ssnf's default, small enough that a 2-core machine's sweep explores it.

The levers (``paper.levers``): augmentation of the training normals (family, share), feature noise, the memory
bank (its knn and fused maps among the scoring candidates validation chooses from). Beside them the few knobs
the ``paper`` sweeps found to matter (docs/benchmarks.md, issue 20): the backbone (efficientnet-lite0 won
magnetic_tile), the self-supervised term on or off (w = 0 won magnetic_tile), the coupling count, the subnet's
blocks and the learning rate. Strides and image size stay the default's (8+16, 256 px: every confirmed
candidate of issue 20). Run it with validation that sees nuisance shifts (``data.nuisance``).

``robust.baseline`` is ssnf's default config: the sweep's trial 0."""

from __future__ import annotations

from search_spaces import register_space
from search_spaces.paper import LEVERS_OFF, levers


@register_space("robust")
def robust(trial) -> dict:
    trial.suggest_categorical("backbone.name", ["mobilenetv2_100", "tf_efficientnet_lite0"])
    depth = trial.suggest_int("space.depth", 1, 2)
    blocks = [trial.suggest_categorical(f"space.block{i}", ["conv", "attn"]) for i in range(depth)]
    trial.suggest_int("model.couplings", 6, 12, step=2)
    derived: dict = {"model.blocks": ",".join(blocks)}
    if not trial.suggest_categorical("space.self_supervised", [True, False]):  # False: the w = 0 ablation
        derived["loss.weight"] = 0.0
    trial.suggest_float("train.lr", 3e-4, 3e-3, log=True)
    levers(trial)
    return derived


robust.baseline = {  # ssnf's defaults (ssnf/config.py); tests/test_spaces.py checks that they stay equal
    "backbone.name": "mobilenetv2_100", "space.depth": 2, "space.block0": "conv", "space.block1": "attn",
    "model.couplings": 10, "space.self_supervised": True, "train.lr": 1e-3, **LEVERS_OFF,
}
