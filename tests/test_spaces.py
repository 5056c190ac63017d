"""Search spaces: every registered space samples valid configs, conditional parameters exist only where
they apply, and a space cannot touch what the experiment fixes. No Ray here (Optuna alone)."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import SPACES, register_space
from ssnf.config import SSNFConfig, to_dict
from ssnf.errors import ConfigError
from ssnf.tune.overrides import EXTRACTOR_KEYS, check_space, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
BASE = to_dict(SSNFConfig())


def samples(space, n: int, seed: int = 0):
    """``n`` (params, derived, config) triples drawn by Optuna's random sampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        derived = space(trial) or {}
        cfg = trial_config(BASE, {**trial.params, **derived})
        cfg.validate()
        out.append((dict(trial.params), derived, cfg))
        study.tell(trial, 0.0)
    return out


def test_the_documented_spaces_are_registered():
    assert {"smoke", "paper", "robust"} <= set(SPACES)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_samples_valid_configs_with_conditional_parameters(name):
    space = SPACES[name]
    drawn = samples(space, 40)
    for params, derived, cfg in drawn:
        depth = params["space.depth"]
        blocks = [params[f"space.block{i}"] for i in range(depth)]
        assert not any(f"space.block{i}" in params for i in range(depth, 8)), "a block kind for a block that does not exist"
        assert cfg.model.blocks == ",".join(blocks) == derived["model.blocks"]
        assert cfg.model.hidden % cfg.model.heads == 0
        if cfg.loss.weight == 0:  # no synthetic term: its synthesis and margin knobs are not searched
            assert not any(k.startswith(("synthesis.", "loss.margin", "loss.cap", "loss.form")) for k in params)
        assert not any((k.startswith(("data.", "backbone.")) and k not in EXTRACTOR_KEYS)
                       or k in ("train.seed", "train.epochs") for k in {**params, **derived})
    depths = {p["space.depth"] for p, _, _ in drawn}
    assert len(depths) > 1, "the stacking depth is searched"
    assert {p["space.block0"] for p, _, _ in drawn} >= {"conv", "attn"}, "the block order is searched"
    check_space(space, BASE, samples=8, seed=1)  # what the driver runs before any trial


def test_paper_space_covers_the_issue_s_knobs():
    keys = set()
    for params, _, _ in samples(SPACES["paper"], 60, seed=3):
        keys |= set(params)
    for knob in ("model.hidden", "model.heads", "model.couplings", "model.clamp", "loss.weight", "loss.form",
                 "loss.margin", "loss.cap", "synthesis.max_patches", "synthesis.width_min", "synthesis.width_max",
                 "synthesis.blend", "synthesis.object_aware", "train.lr", "loss.gate", "loss.gate_quantile",
                 "loss.schedule", "synthesis.foreground", "loss.anchor"):
        assert knob in keys, knob
    drawn = samples(SPACES["paper"], 60, seed=4)
    assert {p["space.depth"] for p, _, _ in drawn} == {1, 2, 3, 4}
    assert {c.loss.weight == 0 for _, _, c in drawn} == {True, False}, "the w = 0 ablation is in the space"


def test_cost_space_searches_the_levers_that_make_a_detector_cheaper():
    drawn = samples(SPACES["cost"], 60, seed=5)
    cfgs = [c for _, _, c in drawn]
    assert {c.data.image_size for c in cfgs} == {192, 224, 256}
    assert {tuple(c.backbone.strides) for c in cfgs} == {(8, 16), (8,), (16,)}
    assert {b for c in cfgs for b in c.model.blocks.split(",")} == {"conv", "dwconv", "conv1", "attn"}
    halved = [c for c in cfgs if c.model.scale_couplings]
    assert halved and all(len(c.backbone.strides) == 2 and c.model.scale_couplings[1] <= c.model.scale_couplings[0]
                          and c.model.scale_hidden[1] <= c.model.scale_hidden[0] for c in halved)
    assert any(c.bank.enabled and c.bank.max_entries < 16384 for c in cfgs)
    assert not any(c.model.scale_couplings for c in cfgs if len(c.backbone.strides) == 1)


def test_a_space_may_not_set_what_the_experiment_fixes():
    for key, value in (("data.root", "x"), ("backbone.pretrained", False), ("train.epochs", 3), ("train.seed", 1)):
        with pytest.raises(ConfigError, match=f"a search space may not set '{key}'"):
            trial_config(BASE, {key: value})


def test_a_typo_in_a_space_fails_before_any_trial():
    def typo(trial):
        trial.suggest_float("loss.wieght", 0.0, 1.0)
        return {}

    with pytest.raises(ConfigError, match="unknown config key 'loss.wieght'"):
        check_space(typo, BASE)

    def impossible(trial):  # heads that do not divide the width
        trial.suggest_categorical("model.heads", [3])
        return {"model.hidden": 16}

    with pytest.raises(ConfigError, match="heads"):
        check_space(impossible, BASE)


def test_register_space_adds_a_named_space():
    @register_space("_test_only")
    def tiny(trial):
        trial.suggest_categorical("loss.weight", [0.0])
        return {"model.blocks": "conv"}

    try:
        assert SPACES["_test_only"] is tiny
        check_space(tiny, BASE)
    finally:
        del SPACES["_test_only"]


def test_paper_space_searches_the_extractor_and_its_baseline_is_the_default_config():
    space = SPACES["paper"]
    drawn = samples(space, 60, seed=5)
    assert len({c.backbone.name for _, _, c in drawn}) == 4
    assert len({c.backbone.strides for _, _, c in drawn}) == 3
    assert len({c.data.image_size for _, _, c in drawn}) == 3


@pytest.mark.parametrize("name", sorted(n for n in SPACES if hasattr(SPACES[n], "baseline")))
def test_a_space_s_baseline_is_the_default_config(name):
    # the baseline is a point of the space (Optuna enqueues it as trial 0) that builds ssnf's default config
    space = SPACES[name]
    study = optuna.create_study()
    study.enqueue_trial(space.baseline)
    trial = study.ask()
    derived = space(trial)
    assert trial.params == space.baseline, "every baseline value is one the space asks for"
    assert to_dict(trial_config(BASE, {**trial.params, **derived})) == BASE


@pytest.mark.parametrize("name", ["paper", "robust"])
def test_the_robustness_levers_are_searched(name):
    drawn = samples(SPACES[name], 60, seed=6)
    assert {c.train.augment for _, _, c in drawn} == {"none", "photometric", "geometric", "full"}
    assert {c.bank.enabled for _, _, c in drawn} == {False, True}
    assert {c.train.feature_noise == 0 for _, _, c in drawn} == {False, True}
    for params, _, cfg in drawn:  # a lever's knob only where the lever is on
        assert ("train.augment_p" in params) == (cfg.train.augment != "none")
        assert ("train.feature_noise" in params) == (cfg.train.feature_noise > 0)


def test_a_space_may_set_the_extractor_but_not_the_rest_of_data_and_backbone():
    cfg = trial_config(BASE, {"backbone.name": "tf_efficientnet_lite0", "backbone.strides": [16], "data.image_size": 192})
    assert (cfg.backbone.name, cfg.backbone.strides, cfg.data.image_size) == ("tf_efficientnet_lite0", (16,), 192)
    for key, value in (("backbone.pretrained", False), ("data.reference", "graded"), ("data.seed", 3)):
        with pytest.raises(ConfigError, match=key):
            trial_config(BASE, {key: value})


def test_check_space_returns_every_backbone_choice_for_the_driver_to_check():
    configs = check_space(SPACES["paper"], BASE, samples=2, seed=0)
    assert {c.backbone.name for c in configs} == {
        "mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"}


def test_what_reaches_optuna_when_a_trial_ends():
    """CostAwareSearch, driven as Ray Tune drives it: a trial ASHA stopped early is PRUNED (Ray reports it as
    complete, with its early score), a full-budget one COMPLETE with every objective, an infeasible one PRUNED with
    its violation as the constraint TPE reads; unknown objectives are refused in one line."""
    import optuna

    from ssnf.errors import SSNFError
    from ssnf.tune.search import CostAwareSearch, parse_objectives, sampler

    def space(trial):
        trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)

    search = CostAwareSearch(space=space, metric=["val_score", "cost_infer_ms_b1"], mode=["max", "min"],
                             sampler=sampler("tpe", 0, 8, constrained=True), budget_epochs=4, budget={"max_ms": 50.0})
    for trial_id in ("full", "stopped", "over"):
        assert "train.lr" in search.suggest(trial_id)
    cost = {"cost_infer_ms_b1": 20.0, "cost_gflops": 1.0}
    search.on_trial_complete("full", {"val_score": 0.9, "training_iteration": 4, **cost})
    search.on_trial_complete("stopped", {"val_score": 0.7, "training_iteration": 1, **cost})
    search.on_trial_complete("over", {"val_score": float("nan"), "infeasible": 1.0, "training_iteration": 1,
                                      "cost_infer_ms_b1": 75.0, "cost_gflops": 4.0})
    full, stopped, over = search._ot_study.trials
    assert full.state == optuna.trial.TrialState.COMPLETE and full.values == [0.9, 20.0]
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.values is None
    assert over.state == optuna.trial.TrialState.PRUNED and tuple(over.system_attrs["constraints"]) == (pytest.approx(0.5),)
    assert tuple(full.system_attrs["constraints"]) == (pytest.approx(-0.6),)
    assert [t.number for t in search._ot_study.best_trials] == [0]
    with pytest.raises(SSNFError, match="unknown objective 'speed'"):
        parse_objectives("val_score,speed")
    assert parse_objectives("val_score, infer_ms ,gflops") == ["val_score", "infer_ms", "gflops"]
