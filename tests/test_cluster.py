"""Sweeps on a real multi-node Ray cluster on this machine (``tests/helpers/loopback.py``): a head with no CPUs and
worker nodes of their own processes and ports, every one bound to 127.0.0.1. The driver is ``tune_main.py``
with ``--address``, as a user runs it. Each test bounds its time and tears its cluster down.

- a sweep of two categories spreads over both worker nodes and ends while other processes keep the CPUs busy;
- a worker node SIGKILLed mid-sweep: its trial continues from its checkpoint on the other node, and the
  Parquet holds exactly the requested trials;
- ``ray job submit`` of a sweep to the head's job server; the job stopped half-way and submitted again with
  ``--resume`` completes without duplicates;
- fractional logical GPUs: four trials share one GPU, each sees it in its own ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray_cluster  # Ray: one at a time in one xdist worker (tests/conftest.py)

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

from tests.helpers.loopback import QUIET_ENV, BusyCPUs, LoopbackCluster  # noqa: E402
from tests.conftest import SWEEP_SETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE_SETS = [f"{k}={v}" for k, v in SWEEP_SETS.items()]
SWEEP_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPUs, job server on 127.0.0.1) + two worker nodes of 1 CPU each."""
    if ray.is_initialized():
        ray.shutdown()
    with LoopbackCluster(workers=2, cpus_per_worker=1, dashboard=True) as c:
        yield c


def env(tmp_path: Path) -> dict:
    return {**os.environ, **QUIET_ENV, "SSNF_FEATURES_DIR": str(tmp_path / "features")}


def sweep_args(demo_root: Path, store: Path, name: str, *extra: str) -> list[str]:
    sets = [a for s in BASE_SETS for a in ("--set", s)]
    return ["--data-root", str(demo_root), "--storage", str(store), "--name", name, "--scheduler", "none",
            *sets, *extra]


def tune_main(address: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tune_main.py"), "--address", address, *args]


def run(cmd: list[str], tmp_path: Path, timeout: float = SWEEP_TIMEOUT_S) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def submitted(*args, tmp_path: Path) -> subprocess.CompletedProcess:
    """``ray job submit``, again while the head's job agent is still starting (Ray answers 'No available
    agent' for the first seconds of a cluster)."""
    cmd = [a for arg in args for a in (arg if isinstance(arg, list) else [arg])]
    deadline = time.time() + 60
    while True:
        done = subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True,
                              timeout=SWEEP_TIMEOUT_S)
        if "No available agent" not in done.stderr or time.time() > deadline:
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
            return done
        time.sleep(1)


def test_sweep_spreads_over_both_workers_while_the_cpus_are_busy(cluster, demo_root, tmp_path):
    store = tmp_path / "store"
    with BusyCPUs():
        run(tune_main(cluster.address, *sweep_args(demo_root, store, "spread", "--categories", "washer,weave",
                                                     "--num-samples", "3", "--max-epochs", "2")), tmp_path)
    trials = pd.read_parquet(store / "spread" / "results" / "trials")
    assert len(trials) == 6 and trials["trial_id"].is_unique and set(trials["status"]) == {"completed"}
    workers = {cluster.node_id(0), cluster.node_id(1)}
    assert set(trials["node_id"]) == workers, "trials ran on both worker nodes, none on the head"
    assert set(trials["node_ip"]) == {"127.0.0.1"} and (trials["niceness"] == 0).all()
    # what a trial received through the object store: features, validation and test set, extractor
    assert (trials["data_bytes"] > 100_000).all() and (trials["data_fetch_s"] >= 0).all()


def test_ray_job_submit_then_stop_then_resume(cluster, demo_root, tmp_path):
    store = tmp_path / "store"
    entry = [sys.executable, "tune_main.py", "--address", "auto",
             *sweep_args(demo_root, store, "job", "--categories", "weave", "--num-samples", "4", "--max-epochs", "4",
                         "--max-concurrent", "1")]  # 4 epochs: a trial lasts longer than the stop takes to land
    job = [str(Path(sys.executable).parent / "ray"), "job"]
    submit = [*job, "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO),
              "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml")]
    submitted(submit, "--no-wait", "--submission-id", "ssnf-job-1", "--", *entry, tmp_path=tmp_path)
    rows = store / "job" / "results" / "trials"
    deadline = time.time() + SWEEP_TIMEOUT_S
    status = ""
    while time.time() < deadline and len(list(rows.glob("*.parquet"))) < 1 and "FAILED" not in status:
        time.sleep(1)
        status = run([*job, "status", "--address", cluster.dashboard_url, "ssnf-job-1"], tmp_path, timeout=60).stdout
    logs = run([*job, "logs", "--address", cluster.dashboard_url, "ssnf-job-1"], tmp_path, timeout=60).stdout
    assert list(rows.glob("*.parquet")), (status + logs)[-3000:]
    run([*job, "stop", "--address", cluster.dashboard_url, "ssnf-job-1"], tmp_path, timeout=120)
    status = run([*job, "status", "--address", cluster.dashboard_url, "ssnf-job-1"], tmp_path, timeout=60).stdout
    assert "was stopped" in status, status
    before = pd.read_parquet(rows)
    assert 1 <= len(before) < 4, "stopped half-way"

    # submitted again with --resume: blocks until the job ends, exit 0 only if it succeeded
    done = submitted(submit, "--submission-id", "ssnf-job-2", "--", *entry, "--resume", tmp_path=tmp_path)
    assert "succeeded" in done.stdout.lower(), done.stdout[-2000:]
    trials = pd.read_parquet(rows)
    assert len(trials) == 4 and trials["trial_id"].is_unique and set(trials["status"]) == {"completed"}
    assert set(before["trial_id"]) <= set(trials["trial_id"])


def test_bad_cluster_input_is_one_line_and_writes_nothing(cluster, demo_root, tmp_path):
    from tests.helpers.loopback import free_port

    def fails(address: str, *extra: str) -> str:
        done = subprocess.run(tune_main(address, *sweep_args(demo_root, tmp_path / "s", "bad", "--categories", "washer",
                                                             *extra)),
                              cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert not (tmp_path / "s").exists()
        return done.stderr.strip()

    assert fails(cluster.address, "--gpus-per-trial", "0.5") == (
        "tune_main: error: --gpus-per-trial 0.5, but no node of this cluster has a GPU (leave it at 0 to train on CPUs)")
    assert "no node has them (the largest has 1 CPU, 0 GPU; the cluster has 2 CPU, 0 GPU in all 3 nodes)" in \
        fails(cluster.address, "--cpus-per-trial", "2")
    assert "is a dashboard (job server) address: submit with `ray job submit" in fails(cluster.dashboard_url)
    dead = f"127.0.0.1:{free_port()}"
    started = time.time()
    assert fails(dead).startswith(f"tune_main: error: no Ray cluster answers at {dead}")
    assert time.time() - started < 60


def test_fractional_gpus_put_four_trials_on_one_gpu(demo_root, tmp_path):
    store = tmp_path / "store"
    # A worker node that declares one logical GPU (`ray start --num-gpus 1`): Ray places and labels the
    # trials as on a GPU machine; train.device=cpu keeps them training on the CPU here (with the default,
    # auto, a trial with a GPU share trains on CUDA).
    with LoopbackCluster(workers=1, cpus_per_worker=1, gpus_per_worker=1) as c:
        run(tune_main(c.address, *sweep_args(
            demo_root, store, "gpus", "--categories", "washer", "--num-samples", "4", "--max-epochs", "10",
            "--gpus-per-trial", "0.25", "--cpus-per-trial", "0.25", "--max-concurrent", "4",
            "--set", "train.device=cpu")), tmp_path)
        node = c.node_id(0)
    trials = pd.read_parquet(store / "gpus" / "results" / "trials")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    assert (trials["gpus"] == 0.25).all() and set(trials["device"]) == {"cpu"}
    # four 0.25 shares of the node's one GPU, at the same time; each trial saw it in CUDA_VISIBLE_DEVICES
    assert set(trials["node_id"]) == {node} and set(trials["gpu_ids"]) == {"0"}
    assert trials["started_at"].max() <= trials["ended_at"].min(), "the four trials ran side by side"


def trained(experiment: Path, at_least: int = 2) -> set[str]:
    """Trials with a checkpoint of at least ``at_least`` epochs."""
    return {p.parent.name for p in experiment.glob("*/trial_*/checkpoint_*") if int(p.name.split("_")[1]) + 1 >= at_least}


def test_a_killed_worker_node_loses_no_trial(demo_root, tmp_path):
    """Also: the worker nodes have no weights cache, and the dataset disappears once the trials run —
    everything a trial needs (extractor, features, validation and test images) came through Ray."""
    from tests.conftest import require_weights

    require_weights("mobilenetv2_100")
    if ray.is_initialized():
        ray.shutdown()
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    store = tmp_path / "store"
    epochs = 40
    cmd = tune_main("ADDRESS", *sweep_args(data, store, "nodeloss", "--categories", "washer", "--num-samples", "2",
                                           "--max-epochs", str(epochs), "--max-concurrent", "2",
                                           "--set", "backbone.pretrained=true", "--set", "model.couplings=1",
                                           "--set", "loss.weight=0"))
    no_cache = {"SSNF_CACHE_DIR": str(tmp_path / "worker-cache"), "SSNF_FEATURES_DIR": str(tmp_path / "worker-features")}
    with LoopbackCluster(workers=2, cpus_per_worker=1, worker_env=no_cache) as c:
        cmd[cmd.index("ADDRESS")] = c.address
        log = (tmp_path / "driver.log").open("w")
        driver = subprocess.Popen(cmd, cwd=tmp_path, env=env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + SWEEP_TIMEOUT_S
            # both trials running, each with two epochs checkpointed (only the latest checkpoint is kept)
            while time.time() < deadline and driver.poll() is None and len(trained(store / "nodeloss")) < 2:
                time.sleep(0.1)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            data.rename(tmp_path / "data-gone")
            killed = c.kill_worker(0)
            assert len(killed) >= 2, "the raylet and at least the trial's worker process"
            c.wait_for_death(0)
            assert driver.wait(timeout=SWEEP_TIMEOUT_S) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        finally:
            if driver.poll() is None:
                driver.kill()
            log.close()
        survivor = c.node_id(1)
    assert not (tmp_path / "worker-cache").exists() and not (tmp_path / "worker-features").exists()
    trials = pd.read_parquet(store / "nodeloss" / "results" / "trials")
    assert len(trials) == 2 and trials["trial_id"].is_unique and set(trials["status"]) == {"completed"}
    assert set(trials["node_id"]) == {survivor}, "both trials finished on the surviving node"
    assert trials["test_image_auroc"].notna().all(), "tested on the test split that came through Ray"
    moved = trials[trials["retries"] >= 1]
    assert len(moved) == 1, trials[["trial_id", "retries", "node_id"]]
    per_epoch = pd.read_parquet(store / "nodeloss" / "results" / "epochs")
    for trial_id, group in per_epoch.groupby("trial_id"):
        assert list(group.sort_values("epoch")["epoch"]) == list(range(1, epochs + 1)), \
            f"{trial_id}: continued from its checkpoint, every epoch once"


def test_local_storage_is_refused_where_nodes_run_on_other_machines(tmp_path):
    """The decision alone, on node addresses as Ray reports them (nothing is contacted)."""
    from ssnf.errors import SSNFError
    from ssnf.tune.connect import check_storage
    from ssnf.tune.options import SweepOptions

    options = SweepOptions(data_root=str(tmp_path), categories=["x"], storage=str(tmp_path / "store"))
    check_storage(options, {"127.0.0.1"}, "127.0.0.1")  # every node on this machine: the folder is shared
    check_storage(options, {"10.1.2.3"}, "10.1.2.3")
    with pytest.raises(SSNFError) as error:
        check_storage(options, {"10.1.2.3", "10.1.2.4", "10.1.2.5"}, "10.1.2.3")
    assert str(error.value) == (
        f"--storage {tmp_path / 'store'} is a local folder, but 2 node(s) of this cluster run on other machines "
        "(10.1.2.4, 10.1.2.5): pass a cloud URI (s3://bucket/sweeps, gs://...) or a folder mounted at the same "
        "path on every node with --shared-storage")
    for accepted in (SweepOptions(data_root="d", categories=["x"], storage="s3://bucket/sweeps"),
                     SweepOptions(data_root="d", categories=["x"], storage=str(tmp_path), shared_storage=True)):
        check_storage(accepted, {"10.1.2.3", "10.1.2.4"}, "10.1.2.3")


def test_node_types_the_autoscaler_may_start_count_as_grantable(tmp_path):
    """On a `ray up` head, GPU workers that scale from zero are not refused as missing."""
    import yaml

    from ssnf.errors import SSNFError
    from ssnf.tune.connect import check_resources, launchable_node_types
    from ssnf.tune.options import SweepOptions

    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(yaml.safe_dump({"available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 4, "GPU": 1}, "min_workers": 0, "max_workers": 4}}}))
    assert launchable_node_types(str(config)) == [{"CPU": 4, "GPU": 1}]
    assert launchable_node_types(str(tmp_path / "none.yaml")) == []
    options = SweepOptions(data_root="d", categories=["x"], cpus_per_trial=1, gpus_per_trial=0.25)
    live = [{"CPU": 0.0}]  # only the head is up
    with pytest.raises(SSNFError, match="no node of this cluster has a GPU"):
        check_resources(options, live)
    check_resources(options, live + launchable_node_types(str(config)))


def test_address_auto_resolves_as_ray_does_and_fails_in_seconds(monkeypatch):
    from ssnf.errors import SSNFError
    from tests.helpers.loopback import free_port
    from ssnf.tune.connect import probe_address

    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", dead)  # what `ray job submit` sets for its driver
    started = time.time()
    with pytest.raises(SSNFError, match=f"no Ray cluster answers at {dead}"):
        probe_address("auto")
    assert time.time() - started < 10
    with pytest.raises(SSNFError, match="expected auto, HOST:PORT or ray://HOST:PORT"):
        probe_address("head-without-port")
