"""cluster/: every file a user copies passes the checks Ray itself runs on it, so the file in the repo is the
file that works. No network, no cloud credentials.

Launcher files (a top-level ``provider``) go through what ``ray up`` runs before it touches a machine:
``commands.create_or_update_cluster`` -> ``_bootstrap_config`` = ``prepare_config`` (the provider's
defaults.yaml, and ``prepare_local`` for the local provider) -> the provider's
``fillout_available_node_types_resources`` -> ``validate_config`` (ray-schema.json and the node-type rules)
-> the provider's ``bootstrap_config``. For the local provider the two provider steps are no-ops, so the test
runs all of ``_bootstrap_config``. For AWS and GCP they call the cloud's API (instance types; keys, roles,
networks) and need its SDK and credentials, so the test runs ``prepare_config`` and ``validate_config`` only
(``ray up`` itself only warns when the AWS resource detection fails).
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import click
import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private import commands
from ray.autoscaler._private.util import prepare_config, validate_config

from tune_main import parse_args

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


LAUNCHERS = sorted(p.name for p in CLUSTER.glob("*.yaml") if "provider" in (yaml.safe_load(p.read_text()) or {}))


def test_the_folder_holds_only_what_users_copy():
    """Configs, the image they run in and how to use them; a harness that tries them (bench/try_onprem.sh) lives
    with the benchmarks."""
    others = [p.name for p in CLUSTER.iterdir() if p.suffix not in (".yaml", ".md") and p.name != "Dockerfile"]
    assert others == [], f"not a config a user copies: {others}"


def gpu_node_types(config: dict) -> list[dict]:
    return [t for t in config.get("available_node_types", {}).values() if t.get("resources", {}).get("GPU")]


GPU_LAUNCHERS = [name for name in LAUNCHERS if gpu_node_types(load(name))]


def ray_up_checks(config: dict) -> dict:
    """What ``ray up`` does with the config before its first cloud call; returns the prepared config."""
    config = copy.deepcopy(config)
    if config["provider"]["type"] == "local":
        return commands._bootstrap_config(config, no_config_cache=True)
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def test_the_launcher_files_are_found():
    assert LAUNCHERS == ["aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml"]
    assert GPU_LAUNCHERS == ["aws-gpu.yaml", "gcp-gpu.yaml"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_ray_up_validation(name):
    config = load(name)
    assert config["provider"]["type"] in commands._NODE_PROVIDERS
    prepared = ray_up_checks(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_ships_the_checkout_and_installs_the_pins(name):
    config = load(name)
    # the checkout goes to ~/ssnf-src (ray up runs in the repo root); not ~/ssnf: `ray submit` runs
    # `python ~/tune_main.py`, and a folder ~/ssnf would shadow the installed package
    assert config["file_mounts"].get("~/ssnf-src") == "." and "~/ssnf" not in config["file_mounts"]
    for local in config["file_mounts"].values():  # ray up asserts each exists
        assert (REPO / local).exists(), local
    # The sync leaves out .git and what .gitignore names (.venv: gigabytes of CUDA wheels).
    assert ".gitignore" in config["rsync_filter"] and "**/.git" in config["rsync_exclude"]
    setup = config["setup_commands"]
    assert any("-r ~/ssnf-src/requirements/lock.txt" in c for c in setup)
    assert any("--no-deps" in c and "-e ~/ssnf-src" in c for c in setup)
    # Only the head needs the weights: the driver extracts the features and ships the extractor.
    assert any("ssnf weights fetch" in c for c in config["head_setup_commands"])
    assert not any("ssnf weights fetch" in c for c in setup)


@pytest.mark.parametrize("name", GPU_LAUNCHERS)
def test_gpu_launcher_keeps_trials_off_the_head(name):
    config = load(name)
    gpu_types = gpu_node_types(config)
    starts = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert starts and all("--num-cpus=0" in c for c in starts)
    # the autoscaler may start them (tune_main.py counts such node types as grantable): declared resources
    assert all(t.get("max_workers", 0) >= 1 and t["resources"].get("GPU", 0) >= 1 for t in gpu_types)
    for t in gpu_types:  # GCP: scheduling is an object (Ray's own examples once had a list)
        if "guestAccelerators" in t["node_config"]:
            assert t["node_config"]["scheduling"] == {"onHostMaintenance": "TERMINATE"}


def test_onprem_keeps_every_listed_worker():
    config = load("onprem.yaml")
    assert config["min_workers"] == config["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("name, edit, error, message", [
    ("onprem.yaml", lambda c: c["provider"].update(worker_ip=c["provider"].pop("worker_ips")),
     click.ClickException, "worker_ips"),  # prepare_local
    ("onprem.yaml", lambda c: c.update(setup_comands=c.pop("setup_commands")),
     jsonschema.ValidationError, "setup_comands"),  # ray-schema.json
    ("aws-gpu.yaml", lambda c: c["available_node_types"]["gpu"].update(
        max_worker=c["available_node_types"]["gpu"].pop("max_workers")), jsonschema.ValidationError, "max_worker"),
])
def test_a_misspelt_key_fails_validation(name, edit, error, message):
    config = load(name)
    edit(config)
    with pytest.raises(error, match=message):
        ray_up_checks(config)


# --- KubeRay ---------------------------------------------------------------------------------------------

def pod_templates(job: dict) -> list[dict]:
    spec = job["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_rayjob_runs_tune_main_on_a_gpu_cluster():
    job = load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert f"ray=={ray.__version__}" in (REPO / "requirements" / "lock.txt").read_text().split()
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for group in [head] + cluster["workerGroupSpecs"]:  # KubeRay takes strings only
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    assert any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
               for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])


def test_rayjob_entrypoint_flags_are_tune_mains():
    entry = load("rayjob.yaml")["spec"]["entrypoint"]
    assert entry.startswith("python tune_main.py ")
    words = shlex.split(entry)
    args = parse_args(words[2:])  # argparse exits (SystemExit) on a misspelt or unknown flag
    assert args.address == "auto" and "://" in args.storage


def test_rayjob_mounts_the_data_root_on_the_head():
    job = load("rayjob.yaml")
    root = parse_args(shlex.split(job["spec"]["entrypoint"])[2:]).data_root
    for template in pod_templates(job)[:1]:  # the head's; the workers get the data through Ray
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get(root) in volumes, f"{container['name']} does not mount {root}"


# --- runtime_env for `ray job submit` ------------------------------------------------------------------

def test_runtime_env_is_what_ray_job_submit_accepts():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    # `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml`: the CLI's parse, then the SDK's
    # RuntimeEnv(**env) (after it uploads the working dir, which needs a cluster).
    env = parse_runtime_env_args(runtime_env=str(CLUSTER / "runtime_env.yaml"), working_dir=str(REPO))
    # RuntimeEnv takes unknown keys (as plugin fields): a misspelt key must fail here.
    assert set(env) <= RuntimeEnv.known_fields, set(env) - RuntimeEnv.known_fields
    parsed = RuntimeEnv(**env).to_dict()
    assert parsed["env_vars"] == {"RAY_USAGE_STATS_ENABLED": "0"}


def test_runtime_env_uploads_the_code_and_nothing_gitignore_names():
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(REPO, load("runtime_env.yaml")["excludes"])  # Ray's own matcher for `excludes`
    samples = [".git", ".venv", "ssnf/__pycache__", "ssnf.egg-info"]
    for line in (REPO / ".gitignore").read_text().splitlines():  # one path each .gitignore line names
        if line.strip() and not line.startswith("#"):
            samples.append(line.strip().strip("/").replace("*", "x"))
    for sample in samples:
        assert excluded(REPO / sample), f"{sample} would be uploaded"
    for kept in ["tune_main.py", "ssnf/__init__.py", "search_spaces/paper.py", "requirements/lock.txt"]:
        assert not excluded(REPO / kept), f"{kept} would be left out"
