"""Connecting to Ray, and what the cluster must grant before anything is written.

Without ``address`` Ray runs privately on the loopback interface, with no dashboard. With it: an address where
no cluster answers fails in seconds (``probe_address``), resources no single node can grant
(``check_resources``) and a local storage path that not every node sees (``check_storage``) are refused.
Trial workers run at normal CPU priority (``trial_runtime_env``, ``trial_niceness`` 0): Ray starts workers at
niceness 15, and on a node that anything else keeps busy they then got a few per cent of a core, so trials
crawled and a loaded cluster looked stalled.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

import ray

from ssnf.errors import SSNFError
from ssnf.tune.options import SweepOptions

PROBE_TIMEOUT_S = 3.0  # how long --address may take to answer
AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the head's autoscaling config


def trial_runtime_env(niceness: int = 0) -> dict:
    """The sweep's Ray job: every worker (its trials) at ``niceness`` (Ray's own default is 15)."""
    return {"env_vars": {"RAY_worker_niceness": str(niceness)}}


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, with one line, where no Ray cluster answers at ``address`` (``ray.init`` would
    retry for minutes). ``auto`` is resolved as Ray resolves it (``RAY_ADDRESS``, then the cluster started
    last on this machine)."""
    if address.startswith(("http://", "https://")):
        raise SSNFError(f"--address {address} is a dashboard (job server) address: submit with `ray job submit "
                        f"--address {address} ... -- python tune_main.py --address auto ...` (cluster/README.md)")
    target = address.removeprefix("ray://")
    if target == "auto":  # (not canonicalize_bootstrap_address: it rewrites 127.0.0.1 to another interface)
        from ray._private.services import get_ray_address_from_environment

        try:
            target = get_ray_address_from_environment("auto", None) or ""
        except (ConnectionError, ValueError):
            target = ""
        if not target or target == "auto":
            raise SSNFError("--address auto: no Ray cluster is running on this machine and RAY_ADDRESS is not set: "
                            "start one (`ray start --head`) or pass the head's HOST:PORT")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SSNFError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SSNFError(f"no Ray cluster answers at {target} ({exc.strerror or exc} within {timeout:g} s): "
                        "check --address, or start the cluster first") from None


def start_ray(options: SweepOptions) -> None:
    """Ray for the run (``address``, else private and local), then the checks only a live cluster answers:
    a trial fits on one of its nodes, and every node sees the storage."""
    if not ray.is_initialized():  # (a caller's own session, e.g. the tests', is used as it is)
        if options.address:
            probe_address(options.address)
            ray.init(address=options.address, logging_level=logging.WARNING,
                     runtime_env=trial_runtime_env(options.trial_niceness))
        else:  # a private local cluster on the loopback interface, no dashboard; "local": a new one, never a
            # `ray start` cluster that happens to run on this machine (ray.init() without an address joins it)
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level=logging.WARNING, runtime_env=trial_runtime_env(options.trial_niceness))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    check_resources(options, [n.get("Resources", {}) for n in nodes] + launchable_node_types())
    check_storage(options, {n.get("NodeManagerAddress", "") for n in nodes}, _driver_ip())


def launchable_node_types(path: str = AUTOSCALER_CONFIG) -> list[dict]:
    """Resources of the node types the cluster's autoscaler may still start: on the head of a cluster from
    `ray up` (where `ray submit` and `ray job submit` run the driver), GPU workers with ``min_workers: 0``
    count as grantable before the first one exists."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        return []
    try:
        types = (yaml.safe_load(file.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError):
        return []
    return [dict(t.get("resources") or {}) for t in types.values() if (t.get("max_workers") or 0) > 0]


def check_resources(options: SweepOptions, nodes: list[dict]) -> None:
    """A trial's CPUs and GPUs must fit on one node (Ray does not split a trial across nodes). ``nodes``:
    the live nodes' resources, and those of node types the autoscaler may start."""
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    if options.gpus_per_trial > 0 and total["GPU"] == 0:
        raise SSNFError(f"--gpus-per-trial {options.gpus_per_trial:g}, but no node of this cluster has a GPU "
                        "(leave it at 0 to train on CPUs)")
    fits = [n for n in nodes if n.get("CPU", 0.0) >= options.cpus_per_trial and n.get("GPU", 0.0) >= options.gpus_per_trial]
    if not fits:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        raise SSNFError(
            f"a trial needs {options.cpus_per_trial:g} CPU and {options.gpus_per_trial:g} GPU on one node, but no "
            f"node has them (the largest has {biggest.get('CPU', 0.0):g} CPU, {biggest.get('GPU', 0.0):g} GPU; "
            f"the cluster has {total['CPU']:g} CPU, {total['GPU']:g} GPU in all {len(nodes)} nodes)")


def _driver_ip() -> str:
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only used to compare addresses
        return ""


def check_storage(options: SweepOptions, node_ips: set[str], driver_ip: str) -> None:
    """A local storage path is where the trials' checkpoints go: every node must see the same folder.
    Accepted when every node runs on the driver's machine (its address, or a loopback address, which only
    a node on this machine can have), or when the user declares the path shared."""
    if "://" in options.storage or options.shared_storage:
        return
    others = sorted(ip for ip in node_ips if ip and ip != driver_ip and not _loopback(ip))
    if others:
        raise SSNFError(
            f"--storage {options.storage} is a local folder, but {len(others)} node(s) of this cluster run on other "
            f"machines ({', '.join(others[:3])}): pass a cloud URI (s3://bucket/sweeps, gs://...) or a folder "
            "mounted at the same path on every node with --shared-storage")


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


__all__ = ["AUTOSCALER_CONFIG", "PROBE_TIMEOUT_S", "check_resources", "check_storage", "launchable_node_types",
           "probe_address", "start_ray", "trial_runtime_env"]
