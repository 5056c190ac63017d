"""A real multi-node Ray cluster on 127.0.0.1, for the tests and benchmarks of cluster sweeps.

Every node is a separate set of Ray processes (GCS, raylet, workers) with its own ports, as in Ray's own
Tune tests (``ray.cluster_utils.Cluster``), all bound to the loopback address: nothing listens on or
talks to any other interface. The head has no CPUs by default, so trials run only on the worker nodes,
as on a cluster whose head is a small coordinator machine.

    with LoopbackCluster(workers=2, cpus_per_worker=1) as cluster:
        subprocess.run(["python", "tune_main.py", "--address", cluster.address, ...])
        cluster.kill_worker(0)            # SIGKILL the node's raylet and its worker processes

``shutdown()`` (and leaving the ``with``) ends every process the cluster started, by its id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
# What every Ray process started here inherits: no usage report, no cluster on any other interface.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
# Node death is noticed after about 5 s (GCS health checks every second, 5 misses) instead of Ray's
# default of about 15 s: a test or benchmark of node loss need not wait for it.
FAST_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5,
                     "health_check_initial_delay_ms": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A head plus ``workers`` worker nodes on 127.0.0.1 (see the module docstring)."""

    def __init__(self, workers: int = 2, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                 head_cpus: float = 0, dashboard: bool = False, system_config: dict | None = None,
                 object_store_mb: int = 150, worker_env: dict | None = None) -> None:
        self.n_workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.head_cpus = head_cpus
        self.dashboard = dashboard
        self.system_config = {**FAST_HEALTH_CHECK, **(system_config or {})}
        self.object_store_bytes = object_store_mb * 1024 * 1024
        self.worker_env = dict(worker_env or {})  # environment of the worker nodes' processes only
        self.dashboard_port = free_port() if dashboard else None
        self._cluster = None
        self.workers: list = []  # ray._private.node.Node of each worker node, in start order
        self._temp_dirs: list[str] = []

    def __enter__(self) -> "LoopbackCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self) -> None:
        os.environ.update(QUIET_ENV)
        from ray.cluster_utils import Cluster

        head = {"node_ip_address": LOOPBACK, "num_cpus": self.head_cpus, "num_gpus": 0,
                "object_store_memory": self.object_store_bytes, "_system_config": self.system_config,
                "include_dashboard": self.dashboard}
        if self.dashboard:  # (the job server needs the head's agent: its own port, not Ray's fixed 52365)
            head.update(dashboard_host=LOOPBACK, dashboard_port=self.dashboard_port,
                        dashboard_agent_listen_port=free_port())
        self._cluster = Cluster(initialize_head=True, head_node_args=head)
        try:
            for _ in range(self.n_workers):
                self.add_worker()
            self._cluster.wait_for_nodes(timeout=60)
        except BaseException:
            self.shutdown()
            raise

    def add_worker(self):
        # Its own temp dir, as on a machine of its own: nodes sharing one would unpack a job's working dir
        # into the same folder and replace it under each other's running processes.
        temp = tempfile.mkdtemp(prefix=f"ray-w{len(self.workers)}-", dir="/tmp")
        self._temp_dirs.append(temp)
        saved = {k: os.environ.get(k) for k in self.worker_env}
        os.environ.update(self.worker_env)  # the node's processes inherit it
        try:
            node = self._cluster.add_node(node_ip_address=LOOPBACK, num_cpus=self.cpus_per_worker,
                                          num_gpus=self.gpus_per_worker, object_store_memory=self.object_store_bytes,
                                          temp_dir=temp)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.workers.append(node)
        return node

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:PORT``) that ``--address`` and ``ray.init`` take."""
        return self._cluster.address

    @property
    def dashboard_url(self) -> str:
        """The job server's address, for ``ray job submit --address``."""
        if not self.dashboard:
            raise RuntimeError("this cluster was started without a dashboard")
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def node_id(self, index: int) -> str:
        return self.workers[index].node_id

    def kill_worker(self, index: int) -> list[int]:
        """SIGKILL worker node ``index``: its raylet and every process the raylet started (its workers,
        which run the trials). Returns the pids killed. The node is not restarted."""
        node = self.workers[index]
        raylet = node.all_processes["raylet"][0].process
        pids = [raylet.pid] + _descendants(raylet.pid)
        _kill(pids)
        raylet.wait(timeout=30)
        return pids

    def node_running_a_trial(self) -> int:
        """Index of a worker node whose raylet runs a trial (a ``ray::ImplicitFunc`` process)."""
        for i, node in enumerate(self.workers):
            for pid in _descendants(node.all_processes["raylet"][0].process.pid):
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                        return i
                except OSError:
                    continue
        raise RuntimeError("no worker node runs a trial")

    def wait_for_death(self, index: int, timeout: float = 60) -> float:
        """Seconds until the GCS marks worker node ``index`` dead."""
        started = time.time()
        node_id = self.node_id(index)
        while time.time() - started < timeout:
            state = {n["NodeID"]: n["Alive"] for n in self._cluster.global_state.node_table()}
            if not state.get(node_id, False):
                return time.time() - started
            time.sleep(0.2)
        raise TimeoutError(f"node {node_id} still alive after {timeout} s")

    def shutdown(self) -> None:
        if self._cluster is None:
            return
        cluster, self._cluster = self._cluster, None
        nodes = list(cluster.worker_nodes) + ([cluster.head_node] if cluster.head_node is not None else [])
        # the processes each raylet started (workers, agents): they would outlive it for a while
        orphans = [pid for node in nodes for info in node.all_processes.get("raylet", [])
                   for pid in _descendants(info.process.pid)]
        for node in nodes:
            cluster.remove_node(node, allow_graceful=False)
        _kill(orphans)
        for temp in self._temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)
        import ray

        ray.experimental.internal_kv._internal_kv_reset()
        ray._common.utils.reset_ray_address()
        ray._private.services.find_gcs_addresses.cache_clear()


class BusyCPUs:
    """One spinning process per CPU at normal priority while the ``with`` lasts: another job on the node."""

    def __enter__(self) -> "BusyCPUs":
        import subprocess
        import sys

        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: Linux only)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
