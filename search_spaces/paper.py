"""``paper``: around the paper's defaults: stacking depth 1-4 and the conv/attention order, width,
heads, couplings, clamp; synthesis patch count, size bounds, blend mode, object-aware placement; loss
weight, its schedule, form, margin and the mask form's novelty gate; learning rate."""

from __future__ import annotations

from search_spaces import register_space


@register_space("paper")
def paper(trial) -> dict:
    depth = trial.suggest_int("space.depth", 1, 4)
    blocks = [trial.suggest_categorical(f"space.block{i}", ["conv", "attn"]) for i in range(depth)]
    trial.suggest_categorical("model.hidden", [64, 128, 256])
    if "attn" in blocks:
        trial.suggest_categorical("model.heads", [2, 4, 8])
    trial.suggest_int("model.couplings", 4, 12, step=2)
    trial.suggest_float("model.clamp", 1.0, 3.0)

    derived: dict = {"model.blocks": ",".join(blocks)}
    if trial.suggest_categorical("space.self_supervised", [True, False]):  # False: the w = 0 ablation
        trial.suggest_float("loss.weight", 0.05, 1.0, log=True)
        trial.suggest_categorical("loss.schedule", ["constant", "linear"])
        form = trial.suggest_categorical("loss.form", ["constrained", "hinge", "mask"])
        if form == "constrained":
            trial.suggest_float("loss.cap", 0.3, 2.0)
        else:
            trial.suggest_float("loss.margin", 0.1, 3.0, log=True)
        if form == "mask" and trial.suggest_categorical("loss.gate", ["none", "novel"]) == "novel":
            trial.suggest_float("loss.gate_quantile", 0.5, 0.99)
        trial.suggest_categorical("loss.anchor", ["none", "unchanged"])
        trial.suggest_int("synthesis.max_patches", 1, 4)
        trial.suggest_float("synthesis.width_min", 0.02, 0.1)
        trial.suggest_float("synthesis.width_max", 0.1, 0.3)
        trial.suggest_categorical("synthesis.blend", ["poisson", "feather", "paste"])
        if trial.suggest_categorical("synthesis.object_aware", [False, True]):
            trial.suggest_categorical("synthesis.foreground", ["auto", "object"])
    else:
        derived["loss.weight"] = 0.0
    trial.suggest_float("train.lr", 1e-4, 3e-3, log=True)
    return derived
