"""``smoke``: tiny models and a few choices; a handful of trials fits in minutes on 2 CPUs."""

from __future__ import annotations

from search_spaces import register_space


@register_space("smoke")
def smoke(trial) -> dict:
    depth = trial.suggest_int("space.depth", 1, 2)
    blocks = [trial.suggest_categorical(f"space.block{i}", ["conv", "attn"]) for i in range(depth)]
    trial.suggest_categorical("model.hidden", [16, 32])
    trial.suggest_int("model.couplings", 2, 4)
    weight = trial.suggest_categorical("loss.weight", [0.0, 0.2, 0.5])
    if weight > 0:
        trial.suggest_categorical("synthesis.blend", ["poisson", "feather"])
    trial.suggest_float("train.lr", 3e-4, 3e-3, log=True)
    return {"model.blocks": ",".join(blocks), "model.heads": 2}
