"""``paper``: around the paper's defaults: stacking depth 1-4 and the conv/attention order, width,
heads, couplings, clamp; synthesis patch count, size bounds, blend mode, object-aware placement; loss
weight, its schedule, form, margin and the mask form's novelty gate; learning rate; the feature
extractor: the four wheel-shipped ImageNet backbones, their feature strides and the image size (each
distinct extractor setting's features are computed once per sweep and shared, ``ssnf.tune.shared``); and the
robustness levers (``levers``): training augmentation, feature noise and the memory bank (its knn and fused
maps then join the scoring validation chooses from).

``paper.baseline`` is ssnf's default config in this space's terms: the sweep runs it as trial 0, so that
every pick is measured against the default on the same budget and validation set."""

from __future__ import annotations

from search_spaces import register_space

BACKBONES = ["mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
STRIDES = ["8,16", "8,16,32", "16"]  # categorical choices must be scalars: spelled, split into backbone.strides
IMAGE_SIZES = [192, 256, 320]


@register_space("paper")
def paper(trial) -> dict:
    trial.suggest_categorical("backbone.name", BACKBONES)
    strides = trial.suggest_categorical("space.strides", STRIDES)
    trial.suggest_categorical("data.image_size", IMAGE_SIZES)
    depth = trial.suggest_int("space.depth", 1, 4)
    blocks = [trial.suggest_categorical(f"space.block{i}", ["conv", "attn"]) for i in range(depth)]
    trial.suggest_categorical("model.hidden", [64, 128, 256])
    if "attn" in blocks:
        trial.suggest_categorical("model.heads", [2, 4, 8])
    trial.suggest_int("model.couplings", 4, 12, step=2)
    trial.suggest_float("model.clamp", 1.0, 3.0)

    derived: dict = {"model.blocks": ",".join(blocks), "backbone.strides": [int(s) for s in strides.split(",")]}
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
    levers(trial)
    return derived


def levers(trial) -> None:
    """The robustness levers, each off in ssnf's default: augmentation of the training normals (family and share),
    Gaussian noise on the flows' training inputs, and the memory bank (knn / fused maps among the candidates)."""
    if trial.suggest_categorical("train.augment", ["none", "photometric", "geometric", "full"]) != "none":
        trial.suggest_float("train.augment_p", 0.25, 1.0)
    if trial.suggest_categorical("space.feature_noise", [False, True]):
        trial.suggest_float("train.feature_noise", 0.02, 0.5, log=True)
    trial.suggest_categorical("bank.enabled", [False, True])


LEVERS_OFF = {"train.augment": "none", "space.feature_noise": False, "bank.enabled": False}  # the default's levers


paper.baseline = {  # ssnf's defaults (ssnf/config.py); tests/test_spaces.py checks that they stay equal
    "backbone.name": "mobilenetv2_100", "space.strides": "8,16", "data.image_size": 256,
    "space.depth": 2, "space.block0": "conv", "space.block1": "attn", "model.hidden": 128, "model.heads": 4,
    "model.couplings": 10, "model.clamp": 2.0, "space.self_supervised": True, "loss.weight": 0.2,
    "loss.schedule": "constant", "loss.form": "mask", "loss.margin": 1.0, "loss.gate": "novel",
    "loss.gate_quantile": 0.9, "loss.anchor": "unchanged", "synthesis.max_patches": 3, "synthesis.width_min": 0.05,
    "synthesis.width_max": 0.2, "synthesis.blend": "poisson", "synthesis.object_aware": False, "train.lr": 1e-3,
    **LEVERS_OFF,
}
