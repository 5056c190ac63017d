"""The sweep on local Ray, on generated demo data: Parquet rows per trial, shared features, a diverging
trial recorded as failed, resume after ``kill -9`` of the driver, and one-line errors for bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray_cluster  # Ray: one at a time in one xdist worker (tests/conftest.py)

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")
pq = pytest.importorskip("pyarrow.parquet")

import tune_main  # noqa: E402
from ssnf.config import SSNFConfig, merge, to_dict  # noqa: E402
from ssnf.results import SCHEMA_VERSION  # noqa: E402
from ssnf.tune.connect import trial_runtime_env  # noqa: E402
from ssnf.tune.options import SweepOptions  # noqa: E402
from ssnf.tune.report import best_table  # noqa: E402
from ssnf.tune.run import run_sweep  # noqa: E402
from tests.conftest import SWEEP_SETS  # noqa: E402
from tests.helpers.cli import run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE_SETS = SWEEP_SETS


def diverging_first(trial) -> dict:
    """Module-level define-by-run space: the first trial diverges (lr 1e6, no clipping), the rest train."""
    trial.suggest_categorical("model.hidden", [8, 16])
    trial.suggest_int("model.couplings", 1, 2)
    derived = {"model.blocks": "conv", "model.heads": 2}
    if trial.number == 0:
        derived.update({"train.lr": 1e6, "train.grad_clip": 0.0})
    return derived


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    features = tmp_path_factory.mktemp("features")
    old = os.environ.get("SSNF_FEATURES_DIR")
    os.environ["SSNF_FEATURES_DIR"] = str(features)  # workers inherit the driver's environment
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
             runtime_env=trial_runtime_env(),
             log_to_driver=False)
    yield features
    ray.shutdown()
    if old is None:
        os.environ.pop("SSNF_FEATURES_DIR", None)
    else:
        os.environ["SSNF_FEATURES_DIR"] = old


def test_sweep_writes_a_typed_parquet_row_per_trial(demo_root, ray_session, tmp_path):
    options = SweepOptions(
        data_root=str(demo_root), categories=["washer"], space="t", num_samples=3, max_epochs=2,
        max_concurrent=2, storage=str(tmp_path / "store"), name="e2e", base=merge(to_dict(SSNFConfig()), BASE_SETS),
        verbose=0, objectives="val_score,infer_ms",
    )
    started = time.time()
    outcomes = run_sweep(options, {"t": diverging_first})

    results = tmp_path / "store" / "e2e" / "results"
    trials = pd.read_parquet(results / "trials")  # plain pandas, no ssnf code
    epochs = pd.read_parquet(results / "epochs")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped", "diverged"}
    diverged = trials[trials["config.train.lr"] == 1e6]
    assert list(diverged["status"]) == ["diverged"]
    assert "loss became nan" in diverged["failure"].iloc[0]
    healthy = trials[trials["status"] != "diverged"]
    assert len(healthy) == 2 and (healthy["status"] == "completed").any()
    for _, row in healthy.iterrows():
        assert row["experiment"] == "e2e" and row["category"] == "washer" and row["budget_epochs"] == 2
        assert 0.0 <= row["final_val_score"] <= 1.0 and row["config.data.image_size"] == 64
        # the scoring chosen on validation for the default 'auto' settings, per trial and per epoch
        assert row["config.scoring.map"] == "auto" and row["final_val_map"] in ("density", "fastflow", "z2", "nll")
        assert row["final_val_image_score"] in ("max", "topk")
        last = epochs[(epochs["trial_id"] == row["trial_id"]) & (epochs["epoch"] == row["epochs_run"])]
        assert last["val_map"].iloc[0] == row["final_val_map"]
        assert len(epochs[epochs["trial_id"] == row["trial_id"]]) == row["epochs_run"]
        full = row["status"] == "completed"
        assert (row["epochs_run"] == 2) == full
        assert pd.notna(row["test_image_auroc"]) == full  # test metrics of the trained model, reported only
        assert row["wall_s"] >= row["train_s"] > 0 and row["ray_overhead_s"] >= 0
        assert row["code_version"] and row["node"] and row["seed"] == 0 and row["cpus"] == 1.0
    # every trial's deployment cost, measured before its first epoch (the diverging one's too)
    assert (trials["cost_infer_ms_b1"] > 0).all() and (trials["cost_infer_ms_b32"] > 0).all()
    assert (trials["cost_gflops"] > 0).all() and (trials["cost_params"] > 0).all() and (trials["cost_threads"] == 1).all()
    # what reached Optuna (two objectives): full-budget trials complete with both values, ASHA-stopped ones
    # pruned (not on the Pareto front as if complete), the diverged one failed
    import optuna

    from ssnf.tune.journal import storage

    study = optuna.load_study(study_name="washer", storage=storage(tmp_path / "store" / "e2e" / "optuna" / "washer.journal"))
    by_cost = {t.user_attrs["cost"]["cost_infer_ms_b1"]: t for t in study.trials}  # a measured float: one per trial
    for _, row in trials.iterrows():
        trial = by_cost[row["cost_infer_ms_b1"]]
        expected = {"completed": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED,
                    "diverged": optuna.trial.TrialState.FAIL}[row["status"]]
        assert trial.state == expected, (row["status"], trial.state)
        if expected == optuna.trial.TrialState.COMPLETE:
            assert trial.values == pytest.approx([row["final_val_score"], row["cost_infer_ms_b1"]])
    assert {t.number for t in study.best_trials} <= {t.number for t in study.trials if t.state.name == "COMPLETE"}
    from ssnf.tune.report import front_table

    front = front_table(outcomes, ["val_score", "infer_ms"])
    assert "| washer |" in front and outcome_best_id(outcomes) in front  # the best val_score is always on the front

    schema = pq.read_schema(next((results / "trials").glob("*.parquet")))
    assert schema.metadata[b"ssnf_schema_version"] == str(SCHEMA_VERSION).encode()
    assert str(schema.field("config.loss.weight").type) == "double"
    strides = schema.field("config.backbone.strides").type
    assert strides.num_fields == 1 and str(strides.value_type) == "int64"
    assert str(schema.field("config.synthesis.object_aware").type) == "bool"
    assert not list(results.rglob("*.part")), "no half-written file stays behind"

    # Features were computed once, by the driver, before any trial started: no trial wrote to the cache.
    cached = [p for p in ray_session.rglob("*") if p.is_file()]
    assert cached and max(p.stat().st_mtime for p in cached) <= trials["started_at"].min().timestamp() + 1
    assert max(p.stat().st_mtime for p in cached) >= started - 1

    (outcome,) = outcomes
    completed = trials[trials["status"] == "completed"]
    assert outcome.best["trial_id"] == completed.loc[completed["final_val_score"].idxmax(), "trial_id"]
    table = best_table(outcomes)
    assert outcome.best["trial_id"] in table and "| washer |" in table


def outcome_best_id(outcomes) -> str:
    return outcomes[0].best["trial_id"]


def extractor_space(trial) -> dict:
    """Module-level space that searches the feature extractor: two image sizes x two stride sets."""
    trial.suggest_categorical("data.image_size", [64, 96])
    strides = trial.suggest_categorical("space.strides", ["8", "8,16"])
    trial.suggest_categorical("model.hidden", [8, 16])
    return {"backbone.strides": [int(s) for s in strides.split(",")], "model.blocks": "conv", "model.heads": 2,
            "model.couplings": 1}


def test_extractor_settings_are_searched_and_each_is_prepared_once(demo_root, ray_session, tmp_path):
    """A space that searches image size and strides: every distinct setting's data are prepared once by the
    store and shared with every trial of that setting; the trial rows name their feature set; the store's
    costs are written per category; the validation recipe of the experiment (standard here) is recorded."""
    import json

    from ssnf.config import from_dict
    from ssnf.results import row_config
    from ssnf.tune.shared import features_id

    options = SweepOptions(
        data_root=str(demo_root), categories=["weave"], space="x", num_samples=6, max_epochs=1,
        max_concurrent=2, storage=str(tmp_path / "store"), name="ext", searcher="random", scheduler="none",
        base=merge(to_dict(SSNFConfig()), {**BASE_SETS, "data.reference": "standard"}), verbose=0,
    )
    run_sweep(options, {"x": extractor_space})
    results = tmp_path / "store" / "ext" / "results"
    trials = pd.read_parquet(results / "trials")
    assert len(trials) == 6 and set(trials["status"]) == {"completed"}
    assert set(trials["config.data.reference"]) == {"standard"}
    settings = trials.groupby(["config.data.image_size", trials["config.backbone.strides"].map(tuple)])
    assert settings.ngroups >= 2, "the random draws cover at least two extractor settings"
    for _, group in settings:
        cfg = from_dict(SSNFConfig, row_config(group.iloc[0]))
        assert set(group["features_id"]) == {features_id(cfg)}, "a setting's trials share one feature set"
        assert (group["data_bytes"] > 0).all()
    stats = json.loads((results / "features" / "weave.json").read_text())
    ids = [s["features_id"] for s in stats]
    assert len(ids) == len(set(ids)), "each setting prepared once"
    used = {s["features_id"]: s["trials"] for s in stats if s["trials"]}
    assert used == trials["features_id"].value_counts().to_dict()
    assert all(s["prepare_s"] > 0 and s["bytes"] > 0 for s in stats)
    # the base setting (64 px, strides 8,16) was prepared by the driver before any trial: it waited for nothing
    base = [s for s in stats if s["image_size"] == 64 and s["strides"] == [8, 16]]
    assert base and (trials[trials["features_id"] == base[0]["features_id"]]["data_prepare_s"] < 0.5).all()

    # confirming candidates of two settings: each is re-trained on its own extractor setting's features
    two = trials.drop_duplicates("features_id").head(2)
    two.to_parquet(tmp_path / "candidates.parquet")
    confirm = SweepOptions(data_root=str(demo_root), categories=["weave"], storage=str(tmp_path / "store"),
                           name="ext-confirm", confirm=str(tmp_path / "candidates.parquet"), seeds=1, verbose=0)
    run_sweep(confirm, {})
    rows = pd.read_parquet(tmp_path / "store" / "ext-confirm" / "results" / "trials")
    assert len(rows) == 2
    want = dict(zip(two["trial_id"], two["features_id"]))
    assert {r["confirms"]: r["features_id"] for _, r in rows.iterrows()} == want


def levers_space(trial) -> dict:
    """Module-level space with the robustness levers: the memory bank on or off, augmentation, feature noise."""
    trial.suggest_categorical("train.augment", ["none", "full"])
    trial.suggest_categorical("train.feature_noise", [0.0, 0.1])
    return {"model.blocks": "conv", "model.heads": 2, "model.couplings": 1, "model.hidden": 8,
            "bank.enabled": trial.number % 2 == 0}


def test_levers_in_a_sweep_share_one_bank_and_report_nuisance_validation(demo_root, ray_session, tmp_path):
    """Trials with the memory bank share one bank per extractor setting (built by the store once); every trial is
    validated with nuisance normals and its row carries the clean score and the nuisance false-positive rate."""
    import json

    options = SweepOptions(
        data_root=str(demo_root), categories=["washer"], space="x", num_samples=4, max_epochs=1,
        max_concurrent=2, storage=str(tmp_path / "store"), name="levers", searcher="random", scheduler="none",
        base=merge(to_dict(SSNFConfig()), {**BASE_SETS, "data.nuisance": "full", "bank.coreset": 0.5}), verbose=0,
        baseline=False,
    )
    run_sweep(options, {"x": levers_space})
    results = tmp_path / "store" / "levers" / "results"
    trials = pd.read_parquet(results / "trials")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    assert trials["final_val_score_clean"].notna().all() and trials["final_val_nuisance_fpr"].between(0, 1).all()
    assert set(trials["config.data.nuisance"]) == {"full"}
    assert trials["config.bank.enabled"].sum() == 2
    settings = json.loads((results / "features" / "washer.json").read_text())
    # a bank's trials take float32 features (SSNFConfig.feature_precision): a feature set of their own, with one
    # bank built on the first request and shared by both trials
    (banked,) = [s for s in settings if s.get("banks")]
    assert banked["precision"] == "fp32" and banked["trials"] == 2
    (bank,) = banked["banks"]
    assert bank["entries"] > 0 and bank["build_s"] > 0 and bank["bytes"] > 0
    assert set(trials[trials["config.bank.enabled"]]["features_id"]) == {banked["features_id"]}
    epochs = pd.read_parquet(results / "epochs")
    assert epochs["val_nuisance_image_auroc"].notna().all()


def unknown_backbone(trial) -> dict:
    """Module-level space offering a backbone timm does not know (and one it does)."""
    trial.suggest_categorical("backbone.name", ["mobilenetv2_100", "mobilenetv9_100"])
    return {"model.blocks": "conv", "model.heads": 2}


def test_every_backbone_a_space_offers_is_checked_before_anything_runs(demo_root, tmp_path):
    from ssnf.errors import BackboneError

    options = SweepOptions(data_root=str(demo_root), categories=["washer"], space="b", num_samples=2, max_epochs=1,
                           storage=str(tmp_path / "store"), name="bb", base=merge(to_dict(SSNFConfig()), BASE_SETS),
                           verbose=0)
    with pytest.raises(BackboneError, match="unknown backbone 'mobilenetv9_100'"):
        run_sweep(options, {"b": unknown_backbone})
    assert not (tmp_path / "store").exists()


def huge_first(trial) -> dict:
    """Module-level space: trial 0 builds a flow far too large for the trial's memory share."""
    trial.suggest_categorical("model.clamp", [1.5, 2.0])
    derived = {"model.blocks": "conv", "model.heads": 2, "model.hidden": 8, "model.couplings": 1}
    if trial.number == 0:
        derived.update({"model.hidden": 4096, "model.couplings": 8, "model.blocks": "conv,conv,conv"})
    return derived


def test_a_trial_too_large_for_its_memory_share_fails_alone(demo_root, ray_session, tmp_path):
    """A config that needs more memory than its share ends as an error naming it; the other trials and the
    sweep go on (without the limit, Ray's memory monitor killed the trial and Ray Tune ended the sweep)."""
    options = SweepOptions(
        data_root=str(demo_root), categories=["washer"], space="h", num_samples=3, max_epochs=1, max_concurrent=1,
        storage=str(tmp_path / "store"), name="mem", scheduler="none", trial_memory=4.0,
        base=merge(to_dict(SSNFConfig()), BASE_SETS), verbose=0,
    )
    run_sweep(options, {"h": huge_first})
    trials = pd.read_parquet(tmp_path / "store" / "mem" / "results" / "trials")
    assert len(trials) == 3
    huge = trials[trials["config.model.hidden"] == 4096]
    assert list(huge["status"]) == ["error"] and "out of memory" in huge["failure"].iloc[0]
    assert "4.0 GiB" in huge["failure"].iloc[0]
    assert set(trials[trials["config.model.hidden"] == 8]["status"]) == {"completed"}


def test_a_gpu_trial_s_share_of_the_card_and_its_out_of_memory_end(monkeypatch):
    """``--gpus-per-trial 0.25``: the trial's allocator may take a quarter of the card (a whole GPU: no cap), its peak
    counters restart for it; CUDA's out-of-memory error ends the trial as out of memory, naming the GPU share.
    (What CUDA does with the cap: tests/test_cuda.py, on a GPU.)"""
    import torch

    from ssnf.tune import trainable

    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: calls.append(("cap", f)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset",)))
    trainable.gpu_memory_share(0.25)
    trainable.gpu_memory_share(1.0)
    assert calls == [("cap", 0.25), ("reset",), ("reset",)]
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 19.50 GiB allowed)")
    assert trainable._out_of_memory(oom) and not trainable._out_of_memory(RuntimeError("shape mismatch"))
    assert trainable._memory_failure(oom, 2**30, 0.25, "cuda").startswith(
        "out of GPU memory: the trial needs more than its share of the GPU (0.25, --gpus-per-trial; CUDA out of")
    assert "1.0 GiB share of the node (--trial-memory" in trainable._memory_failure(MemoryError(), 2**30, 0.0, "cpu")


def test_sweep_select_confirm_then_train_the_choice(demo_root, ray_session, tmp_path):
    """The loop a user runs: sweep -> provisional pick -> confirmation over new seeds -> confirmed pick ->
    its YAML -> `ssnf train` trains exactly that config. Also: the Optuna study is in the journal file."""
    import json

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from analysis.selection import select, write_selection
    from search_spaces import SPACES
    from ssnf.results import read_results, row_config

    store = tmp_path / "store"
    common = dict(data_root=str(demo_root), storage=str(store), max_concurrent=2, verbose=0,
                  base=merge(to_dict(SSNFConfig()), BASE_SETS))
    run_sweep(SweepOptions(categories=["washer"], space="smoke", num_samples=3, max_epochs=2, scheduler="none",
                           name="s", **common), SPACES)
    trials = read_results([store / "s"]).trials
    assert len(trials) == 3 and set(trials["space"]) == {"smoke"} and trials["confirms"].isna().all()

    # the journal holds the sweep's study: the same parameters and values as the Parquet rows
    journal = store / "s" / "optuna" / "washer.journal"
    study = optuna.load_study(study_name="washer", storage=JournalStorage(JournalFileBackend(str(journal))))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    assert sorted(t.value for t in done) == pytest.approx(sorted(trials["final_val_score"]))
    rows = [{k: v["value"] for k, v in json.loads(p).items()} for p in trials["params"]]
    canon = lambda params: json.dumps(params, sort_keys=True)  # noqa: E731
    assert sorted(map(canon, (t.params for t in done))) == sorted(map(canon, rows))

    provisional = select(read_results([store / "s"]), k=2)
    write_selection(provisional, tmp_path / "best")
    run_sweep(SweepOptions(categories=[], confirm=str(tmp_path / "best" / "candidates.parquet"), seeds=2,
                           name="s-confirm", **common), SPACES)
    runs = read_results([store / "s-confirm"]).trials
    assert len(runs) == 4 and set(runs["status"]) == {"completed"} and set(runs["seed"]) == {1, 2}
    assert set(runs["confirms"]) == set(provisional.candidates["trial_id"]) and set(runs["confirms_experiment"]) == {"s"}
    for _, run in runs.iterrows():  # the candidate's config, only the seed changed
        source = trials[trials["trial_id"] == run["confirms"]].iloc[0]
        mine, theirs = row_config(run), row_config(source)
        assert mine["train"].pop("seed") != theirs["train"].pop("seed")
        assert mine == theirs

    confirmed = select(read_results([store / "s", store / "s-confirm"]), k=2)
    table = confirmed.table
    assert table["confirmed"].all() and table["n_seeds"].tolist() == [2, 2]
    assert table.loc[table["chosen"], "val_mean"].iloc[0] == table["val_mean"].max()
    write_selection(confirmed, tmp_path / "best2")

    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSNF_FEATURES_DIR", str(ray_session))
        done = run_cli("train", "--config", str(tmp_path / "best2" / "washer.yaml"), "--out", str(out), "--no-test",
                       "--quiet", cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    import yaml

    from ssnf.config import from_dict

    from analysis.selection import deployable

    chosen = confirmed.chosen.iloc[0]
    trained = yaml.safe_load((out / "config.yaml").read_text())
    assert trained == deployable(chosen) == yaml.safe_load((tmp_path / "best2" / "washer.yaml").read_text())
    expected = to_dict(from_dict(SSNFConfig, row_config(chosen)))
    expected["train"].update(threads=0, device="auto")
    assert trained == expected, "the trial's config, except where it ran"


def one_slow_trial(trial) -> dict:
    """Module-level space: one small model trained for many short epochs (time to kill its worker)."""
    trial.suggest_categorical("model.hidden", [8])
    return {"model.blocks": "conv", "model.heads": 2, "model.couplings": 1, "loss.weight": 0.0}


def _trial_workers() -> list[int]:
    """PIDs of Ray worker processes that are running a trial (Ray titles them ``ray::ImplicitFunc...``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_trial_whose_worker_dies_is_retried_from_its_checkpoint(demo_root, ray_session, tmp_path):
    import threading

    store = tmp_path / "store"
    options = SweepOptions(
        data_root=str(demo_root), categories=["washer"], space="slow", num_samples=1, max_epochs=25,
        max_concurrent=1, scheduler="none", storage=str(store), name="retry",
        base=merge(to_dict(SSNFConfig()), BASE_SETS), verbose=0,
    )
    outcome: list = []
    sweep = threading.Thread(target=lambda: outcome.extend(run_sweep(options, {"slow": one_slow_trial})))
    sweep.start()
    killed = None
    deadline = time.time() + 600  # generous: a loaded machine starts workers slowly
    while killed is None and time.time() < deadline and sweep.is_alive():
        if list((store / "retry" / "washer").glob("trial_*/checkpoint_00000[1-9]")):  # two epochs reported
            workers = _trial_workers()
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
        time.sleep(0.05)
    sweep.join(timeout=900)
    assert killed is not None, "the trial ended before its worker could be killed"
    trials = pd.read_parquet(store / "retry" / "results" / "trials")
    (row,) = trials.itertuples()
    assert row.status == "completed" and row.retries >= 1 and row.epochs_run == 25
    epochs = pd.read_parquet(store / "retry" / "results" / "epochs")
    assert list(epochs["epoch"]) == list(range(1, 26)), "continued from the checkpoint: every epoch once"


def _tune_main(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "tune_main.py"), *args]


def _run_until(cmd: list[str], env: dict, cwd: Path, rows: Path, n_rows: int, sig: int, log: Path) -> int:
    """Start a driver, send it ``sig`` once ``rows`` holds ``n_rows`` trial files; its exit status."""
    with log.open("w") as out:
        driver = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 600
            while time.time() < deadline and len(list(rows.glob("*.parquet"))) < n_rows and driver.poll() is None:
                time.sleep(0.2)
            assert driver.poll() is None, f"the sweep ended before it could be stopped:\n{log.read_text()[-2000:]}"
            os.kill(driver.pid, sig)
            return driver.wait(timeout=600)
        finally:
            if sig == signal.SIGKILL:
                try:
                    os.killpg(driver.pid, signal.SIGKILL)  # the local Ray processes of the killed driver too
                except ProcessLookupError:
                    pass


def test_ctrl_c_then_kill_9_then_resume_loses_and_duplicates_nothing(demo_root, tmp_path):
    store = tmp_path / "store"
    common = ["--data-root", str(demo_root), "--categories", "weave", "--space", "smoke", "--num-samples", "4",
              "--max-epochs", "2", "--max-concurrent", "1", "--scheduler", "none", "--storage", str(store),
              "--name", "stopped"] + [a for k, v in BASE_SETS.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "SSNF_FEATURES_DIR": str(tmp_path / "features")}
    rows = store / "stopped" / "results" / "trials"

    # Ctrl-C: Ray Tune saves the experiment and returns; tune_main says how to continue, exit 130.
    log = tmp_path / "first.log"
    assert _run_until(_tune_main(*common), env, tmp_path, rows, 1, signal.SIGINT, log) == 130
    assert "tune_main: interrupted: the sweep stopped with" in log.read_text()
    assert "continue with --name stopped --resume" in log.read_text()
    first = pd.read_parquet(rows)
    assert 1 <= len(first) < 4

    # kill -9 of the resumed driver once it has ended one more trial.
    code = _run_until(_tune_main(*common, "--resume"), env, tmp_path, rows, len(first) + 1, signal.SIGKILL,
                      tmp_path / "second.log")
    assert code == -signal.SIGKILL
    before = pd.read_parquet(rows).set_index("trial_id")
    assert len(first) < len(before) < 4

    done = subprocess.run(_tune_main(*common, "--resume"), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = pd.read_parquet(rows)
    assert len(trials) == 4 and trials["trial_id"].is_unique, "resume ran up to the requested trials, once each"
    assert set(trials["status"]) == {"completed"}
    # A trial that ended just before the kill, after Ray's last snapshot of the experiment, is finished
    # again from its checkpoint and its row rewritten in place: same trial, same results, one row.
    after = trials.set_index("trial_id")
    assert set(before.index) <= set(after.index), "rows written before the kill are kept"
    pd.testing.assert_series_equal(before["final_val_score"], after.loc[before.index, "final_val_score"])
    assert "| weave |" in done.stdout and "--name stopped --resume" in done.stdout

    # --resume went on with the same Optuna study, in the experiment's journal file
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(store / "stopped" / "optuna" / "weave.journal")))
    assert optuna.get_all_study_names(storage) == ["weave"]
    study = optuna.load_study(study_name="weave", storage=storage)
    told = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # a trial asked for just before an interrupt never ran: closed as failed once the study ended, not left running
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert all(any(v == pytest.approx(x) for x in told) for v in trials["final_val_score"]), (told, trials["final_val_score"])


@pytest.mark.parametrize("args, message", [
    (["--space", "nope"], "unknown search space 'nope'; known: cost, paper, robust, smoke"),
    (["--objectives", "val_score,speed"], "--objectives: unknown objective 'speed'; known: val_score, infer_ms"),
    (["--objectives", "infer_ms"], "val_score must be one of them"),
    (["--max-ms", "-1"], "--max-ms=-1 must be 0 (no bound) or positive"),
    (["--confirm", "x.parquet", "--max-ms", "40"], "--confirm re-trains chosen candidates with new seeds: --max-ms"),
    (["--categories", "bottle"], "category 'bottle' not found in"),
    (["--num-samples", "0"], "--num-samples=0 must be at least 1"),
    (["--resume", "--name", "never-ran"], "--resume: nothing to resume at"),
    (["--confirm", "nowhere.parquet"], "--confirm nowhere.parquet: no such file"),
    (["--confirm", "x.parquet", "--space", "smoke"], "--confirm re-trains the candidates' own configs and budget"),
])
def test_bad_input_is_one_line_and_writes_nothing(demo_root, tmp_path, capsys, args, message):
    store = tmp_path / "store"
    base = ["--data-root", str(demo_root), "--categories", "washer", "--storage", str(store)]
    assert tune_main.main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune_main: error: ") and message in err and "\n" not in err
    assert not store.exists()


def test_the_flags_are_the_fields_of_sweep_options(capsys):
    """tune_main.py's flags are derived from SweepOptions: a flag per field with a help text, its choices from the
    field's Literal, its default (shown in --help) the field's, and only the flags given reach the options."""
    from dataclasses import MISSING, fields

    from ssnf.tune.options import given
    from ssnf.tune.search import SCHEDULERS, SEARCHERS

    args = tune_main.parse_args(["--data-root", "d", "--categories", "a,b", "--no-baseline", "--searcher", "random"])
    assert given(args) == {"data_root": "d", "categories": ["a", "b"], "baseline": False, "searcher": "random"}
    options = SweepOptions(**given(args))
    for f in fields(SweepOptions):
        if f.name not in given(args) and f.default is not MISSING:
            assert getattr(options, f.name) == f.default
    with pytest.raises(SystemExit):
        tune_main.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{{{','.join(SEARCHERS)}}}" in text and f"{{{','.join(SCHEDULERS)}}}" in text
    assert f"(default: {SweepOptions.max_epochs}; the demo 4)" in text and "--no-reuse-actors" in text


def test_missing_data_root_and_resume_without_name(tmp_path, capsys):
    assert tune_main.main(["--data-root", str(tmp_path / "nowhere"), "--categories", "x"]) == 2
    assert f"data root {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert tune_main.main(["--data-root", str(tmp_path), "--resume"]) == 2
    assert "--resume needs the --name" in capsys.readouterr().err


def test_resources_the_cluster_cannot_grant(demo_root, ray_session, tmp_path, capsys):
    store = tmp_path / "store"
    rc = tune_main.main(["--data-root", str(demo_root), "--categories", "washer", "--storage", str(store),
                         "--cpus-per-trial", "64"])
    assert rc == 2
    assert "a trial needs 64 CPU and 0 GPU on one node, but no node has them (the largest has 2 CPU" in capsys.readouterr().err
    assert not store.exists()


def test_journal_of_a_cloud_storage_is_uploaded_and_fetched_back(tmp_path):
    """Cloud storage: Optuna writes a local journal; the callback's JournalSync uploads it to the experiment
    folder, and --resume on a machine without the local copy fetches it (a file:// URI stands in for s3://)."""
    from ssnf.tune.journal import JournalSync, journal_uri, local_journal

    uri = journal_uri(f"file://{tmp_path}/bucket/exp", "tire")
    assert uri == f"file://{tmp_path}/bucket/exp/optuna/tire.journal"
    local_copy = local_journal(f"file://{tmp_path}/bucket/exp", "tire")
    assert local_copy.name == "tire.journal" and "file://" not in str(local_copy)
    local = tmp_path / "here" / "tire.journal"
    local.parent.mkdir()
    local.write_bytes(b'{"op_code": 0}\n')
    JournalSync(str(local), uri)()
    assert (tmp_path / "bucket" / "exp" / "optuna" / "tire.journal").read_bytes() == local.read_bytes()
    elsewhere = tmp_path / "elsewhere" / "tire.journal"
    JournalSync(str(elsewhere), uri).download()
    assert elsewhere.read_bytes() == local.read_bytes()


def test_orphan_trials_of_an_ended_study_are_closed(tmp_path):
    """A trial asked for just before an interrupt never runs: once the study's trials have all ended it is
    marked failed, so the journal (and optuna-dashboard) shows nothing running forever."""
    import optuna

    from ssnf.tune.journal import close_orphans, storage as _storage

    journal = tmp_path / "optuna" / "tire.journal"
    assert close_orphans(journal, "tire") == 0  # no journal yet: nothing to do
    study = optuna.create_study(study_name="tire", storage=_storage(journal), direction="maximize")
    done = study.ask()
    done.suggest_float("x", 0, 1)
    study.tell(done, 0.5)
    study.ask()  # the orphan
    assert close_orphans(journal, "tire") == 1 and close_orphans(journal, "other") == 0
    states = [t.state for t in optuna.load_study(study_name="tire", storage=_storage(journal)).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


def cost_split(trial) -> dict:
    """Module-level space: even trials a wide flow, odd trials a narrow one (their GFLOP differ by design)."""
    trial.suggest_float("train.lr", 1e-3, 2e-3)
    wide = trial.number % 2 == 0
    return {"model.hidden": 64 if wide else 8, "model.blocks": "conv,conv" if wide else "conv", "model.heads": 2,
            "model.couplings": 4 if wide else 1}


def test_a_budget_ends_costly_trials_before_training_and_optuna_learns_it(demo_root, ray_session, tmp_path):
    """--max-gflops between the two configs' costs: the wide trials end before their first epoch as infeasible
    (with their measured cost), Optuna records them as constraint violations (not scores); a budget that no
    config meets ends the sweep with one line naming the cheapest cost seen."""
    import optuna

    from ssnf.config import from_dict
    from ssnf.cost import measure_cost
    from ssnf.errors import SSNFError
    from ssnf.tune.journal import storage
    from ssnf.tune.overrides import trial_config

    base = merge(to_dict(SSNFConfig()), {**BASE_SETS, "data.category": "washer"})
    narrow = measure_cost(trial_config(base, {"model.hidden": 8, "model.blocks": "conv", "model.heads": 2,
                                              "model.couplings": 1})).gflops
    wide = measure_cost(trial_config(base, {"model.hidden": 64, "model.blocks": "conv,conv", "model.heads": 2,
                                            "model.couplings": 4})).gflops
    assert wide > 1.5 * narrow
    limit = (narrow + wide) / 2
    options = SweepOptions(data_root=str(demo_root), categories=["washer"], space="c", num_samples=4, max_epochs=1,
                           max_concurrent=2, storage=str(tmp_path / "store"), name="budget", base=base, verbose=0,
                           max_gflops=limit, scheduler="none")
    run_sweep(options, {"c": cost_split})
    trials = pd.read_parquet(tmp_path / "store" / "budget" / "results" / "trials")
    over = trials[trials["config.model.hidden"] == 64]
    assert len(over) == 2 and set(over["status"]) == {"infeasible"} and (over["epochs_run"] == 0).all()
    assert (over["cost_gflops"] > limit).all() and over["final_val_score"].isna().all()
    assert over["failure"].str.contains(f"over the budget \\(--max-gflops {limit:g}\\)").all()
    inside = trials[trials["config.model.hidden"] == 8]
    assert set(inside["status"]) == {"completed"} and (inside["cost_gflops"] <= limit).all()
    study = optuna.load_study(study_name="washer", storage=storage(tmp_path / "store" / "budget" / "optuna" / "washer.journal"))
    assert len(study.trials) == 4
    for t in study.trials:
        violation = t.user_attrs["cost_violation"]
        assert list(t.system_attrs["constraints"]) == [violation]  # what TPE's constraints_func read
        wide_trial = t.user_attrs["cost"]["cost_gflops"] > limit
        assert (violation > 0) == wide_trial
        assert t.state == (optuna.trial.TrialState.PRUNED if wide_trial else optuna.trial.TrialState.COMPLETE)

    never = SweepOptions(data_root=str(demo_root), categories=["washer"], space="c", num_samples=2, max_epochs=1,
                         max_concurrent=2, storage=str(tmp_path / "store"), name="never", base=base, verbose=0,
                         max_gflops=narrow / 10, scheduler="none")
    with pytest.raises(SSNFError, match=r"no config of space 'c' met --max-gflops [\d.e-]+ in the first 2 trials "
                                        r"\(the cheapest measured [\d.e-]+ GFLOP/image\)"):
        run_sweep(never, {"c": cost_split})
