"""The Tune trainable: one trial = one ``ssnf.training.train`` run.

Every epoch it reports the epoch's losses and validation metrics with ``tune.report`` and a checkpoint
(the run's ``checkpoint.pt``), so a retried trial (``FailureConfig``) and a resumed experiment continue
from the last epoch. A trial that trains the full budget also reports its test metrics with its last
epoch (prefixed ``test_``; reported, never used to select). A diverging trial reports ``diverged``, the reason
and a NaN ``val_score``, and ends, so it is recorded as failed and not retried; the sweep goes on.

Memory: each CPU trial's process may allocate at most its share of the node's memory (``memory_budget``: a data
segment limit, ``RLIMIT_DATA``, over what the process holds when the trial starts, ``data_in_use``; GPU trials are left unlimited: CUDA maps large private regions of its own). A GPU trial with a fraction of a GPU
(``--gpus-per-trial 0.25``) may allocate that fraction of the GPU's memory (``gpu_memory_share``), so that the
trials sharing a card cannot starve each other. A config too large for its share (a wide, deep flow at a large
image size) fails its first allocation beyond it: the trial reports ``out_of_memory`` and ends as an error with the
reason, and the sweep goes on. Its peak GPU memory is reported with every epoch (``gpu_peak_bytes``,
``gpu_reserved_bytes``). Without the limit the node ran out of memory, Ray's memory monitor killed the
trial and Ray Tune (2.60) ended the whole sweep on that kill ("Caught unexpected exception").

The prepared data (features, validation set, decoded test split, the frozen extractor with its weights; the
memory bank when ``bank.enabled``) of the trial's extractor setting come from the category's ``FeatureStore`` through Ray's object store
(``ssnf.tune.shared``): a trial on any node of a cluster needs neither the dataset nor the weights cache,
and each setting is prepared once per sweep. Each report also names where the trial ran (Ray node id, GPU
ids, torch device, process niceness) and what getting the data cost, and what the trial's detector costs in deployment (``trial_cost``: parameters,
GFLOP and ms per image at batch 1 and 32, measured before the first epoch on the trial's node and threads); a
trial over the sweep's budget (``--max-ms``, ``--max-gflops``) reports ``infeasible`` with its cost and ends.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from ssnf.config import to_dict
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.devices import cuda_memory
from ssnf.evaluate import evaluate
from ssnf.files import atomic_path
from ssnf.paths import FEATURES_ENV
from ssnf.prepared import PreparedData
from ssnf.training import TrainingDiverged, train
from ssnf.tune.overrides import trial_config
from ssnf.tune.search import INFEASIBLE_KEY, budget_violation

HISTORY = "history.json"  # a trial checkpoint's epoch reports, readable without loading the checkpoint


def placement() -> dict:
    """Where this trial runs: its Ray node, the GPUs Ray gave it, and its CPU priority."""
    return {"node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "niceness": os.nice(0)}


MEMORY_SHARE = 0.6  # of a node's memory, split between the trials that can run on it at once


def memory_budget(memory_gib: float, slots: int) -> int:
    """Bytes a trial's process may allocate: ``memory_gib`` when set, else ``MEMORY_SHARE`` of this node's
    memory over ``slots`` (the trials that run on it at once)."""
    if memory_gib > 0:
        return int(memory_gib * 2**30)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(MEMORY_SHARE * total / max(1, slots))


def data_in_use() -> int:
    """Bytes of this process's data segment now (``VmData``: what ``RLIMIT_DATA`` counts), 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _out_of_memory(exc: BaseException) -> bool:
    """The host's allocation refused (``RLIMIT_DATA``), or CUDA's (the GPU share, or the card full)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                            and ("can't allocate memory" in text or "CUDA out of memory" in text))


def gpu_memory_share(gpus: float) -> None:
    """A GPU trial's memory: with a fraction of a GPU (``0 < gpus < 1``), torch's allocator may take at most that
    fraction of the card's memory (the trial's process sees one card: Ray sets ``CUDA_VISIBLE_DEVICES``); the
    peak counters start from zero for this trial (a reused worker process ran others before)."""
    import torch

    if 0 < gpus < 1:
        torch.cuda.set_per_process_memory_fraction(gpus)
    torch.cuda.reset_peak_memory_stats()


def _memory_failure(exc: BaseException, share: int, gpus: float, device: str) -> str:
    """Why an out-of-memory trial ended: its host share (``--trial-memory``) or its GPU share (``--gpus-per-trial``)."""
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    if device == "cuda":
        return f"out of GPU memory: the trial needs more than its share of the GPU ({gpus:g}, --gpus-per-trial; {first})"
    return (f"out of memory: the trial needs more than its {share / 2**30:.1f} GiB share of the node "
            f"(--trial-memory; {first})")


def trial_cost(cfg) -> dict:
    """The trial's deployment cost (``ssnf.cost``), measured here, on the trial's node and threads, before it
    trains: ``cost_*`` result keys."""
    import torch

    from ssnf.cost import measure_cost

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    from ssnf.training import resolve_device

    t = time.perf_counter()
    cost = measure_cost(cfg, device=resolve_device(cfg.train.device))
    return {**{f"cost_{k}": v for k, v in cost.as_dict().items()}, "cost_s": time.perf_counter() - t}


def run_trial(config: dict, base: dict, store=None, private_cache: bool = False,
              confirming: dict | None = None, memory_gib: float = 0.0, slots: int = 1,
              cost_budget: dict | None = None, gpus: float = 0.0) -> None:
    """One trial; ``store``: the category's ``FeatureStore`` actor (None: the trial prepares its own data);
    ``memory_gib``/``slots``: its memory budget (``memory_budget``); ``cost_budget``: its cost bounds
    (``ssnf.tune.search.BUDGETS``): over them it ends before training, as infeasible; ``gpus``: its GPUs
    (``--gpus-per-trial``; a fraction caps its GPU memory: ``gpu_memory_share``)."""
    cfg = trial_config(base, config, confirming)
    where = placement()
    if cfg.train.device == "cuda":
        gpu_memory_share(gpus)
    # the trials that can run at once on this node: the sweep's concurrency, at most the node's CPUs' worth
    share = memory_budget(memory_gib, min(slots, max(1, (os.cpu_count() or 1) // max(1, cfg.train.threads))))
    saved_limit = resource.getrlimit(resource.RLIMIT_DATA)
    hard = saved_limit[1]
    if cfg.train.device == "cpu":  # a GPU trial's memory is the GPU's; CUDA's own mappings must not meet the limit
        # the share is the trial's own: on top of what this worker process holds already (Ray reuses a trial's
        # process for the next trial, whose data segment keeps what the allocator did not hand back)
        limit = share + data_in_use()
        resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        # the cost first: a trial over the budget ends before its data (perhaps a new extractor setting's features)
        # is prepared or fetched. A memory bank is timed at bank.max_entries entries (what a category's coreset reaches)
        try:
            where.update(trial_cost(cfg))
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            end_trial("out_of_memory", f"measuring its cost, {_memory_failure(exc, share, gpus, cfg.train.device)}",
                      where, saved_limit)
            return
        violation = budget_violation(where, cost_budget or {})
        if violation > 0:
            limits = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in (cost_budget or {}).items())
            end_trial(INFEASIBLE_KEY, f"over the budget ({limits}): {where['cost_infer_ms_b1']:.1f} ms/image at "
                      f"batch 1, {where['cost_gflops']:.2f} GFLOP/image", where, saved_limit, cost_violation=violation)
            return
        data, bank = fetch_data(store, cfg, where)
        train_trial(cfg, where, data, bank, private_cache, share, saved_limit, gpus)
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, saved_limit)
        release_memory()


def end_trial(key: str, failure: str, where: dict, saved_limit: tuple[int, int], **extra: float) -> None:
    """The trial's last report: ``key`` (``diverged``, ``out_of_memory``, ``infeasible``) and why, with a NaN
    ``val_score`` (Tune requires the metric in every result; Optuna records a NaN trial as failed and ASHA's
    cut-offs ignore it). It then ends normally, so ``FailureConfig`` does not retry it. The memory limit is
    lifted first: room to report."""
    resource.setrlimit(resource.RLIMIT_DATA, saved_limit)
    tune.report({key: 1.0, "failure": failure, "val_score": float("nan"), **extra, **where, **cuda_memory("cuda")})


def fetch_data(store, cfg, where: dict) -> tuple[PreparedData | None, object]:
    """The trial's extractor setting's prepared data (and memory bank) from the category's store, timed into
    ``where``; (None, None) without a store."""
    if store is None:
        return None, None
    t = time.perf_counter()
    shared = ray.get(store.get.remote(to_dict(cfg)))
    data = ray.get(shared.ref)
    bank = ray.get(shared.bank) if shared.bank is not None else None
    where.update(data_fetch_s=time.perf_counter() - t - shared.prepare_s, data_prepare_s=shared.prepare_s,
                 data_bytes=shared.nbytes + shared.bank_bytes, features_id=shared.features_id)
    return data, bank


def train_trial(cfg, where: dict, data: PreparedData | None, bank, private_cache: bool, share: int,
                saved_limit: tuple[int, int], gpus: float = 0.0) -> None:
    """Trains the trial (from ``tune.get_checkpoint()`` where Tune restores it), reporting every epoch; a
    diverging or out-of-memory run ends it (``end_trial``)."""
    work = Path(tempfile.mkdtemp(prefix="ssnf-trial-"))
    saved_env = os.environ.get(FEATURES_ENV)
    if private_cache:  # measure "features recomputed per trial": no cache shared with other trials
        os.environ[FEATURES_ENV] = str(work / "features")
    ckpt_dir = work / "checkpoint"
    ckpt_dir.mkdir()
    resume, history = restore_checkpoint(ckpt_dir)
    try:
        train(cfg, out_dir=ckpt_dir, callback=EpochReporter(cfg, ckpt_dir, history, where, data), resume=resume,
              progress=False, data=data, slim_checkpoints=True, thresholds=False, bank=bank)
    except TrainingDiverged as exc:
        end_trial("diverged", str(exc), where, saved_limit)
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        end_trial("out_of_memory", _memory_failure(exc, share, gpus, cfg.train.device), where, saved_limit)
    finally:
        if private_cache:  # Ray reuses worker processes: leave the environment as it was
            if saved_env is None:
                os.environ.pop(FEATURES_ENV, None)
            else:
                os.environ[FEATURES_ENV] = saved_env
        shutil.rmtree(work, ignore_errors=True)


def restore_checkpoint(ckpt_dir: Path) -> tuple[Path | None, list[dict]]:
    """Tune's checkpoint of this trial (a retry, a resumed experiment) copied into ``ckpt_dir``: the file to
    resume from and the epoch reports so far; (None, []) for a fresh trial."""
    restored = tune.get_checkpoint()
    if restored is None:
        return None, []
    history: list[dict] = []
    with restored.as_directory() as folder:
        shutil.copy(Path(folder) / "checkpoint.pt", ckpt_dir / "checkpoint.pt")
        if (Path(folder) / HISTORY).is_file():
            history = json.loads((Path(folder) / HISTORY).read_text())
    return ckpt_dir / "checkpoint.pt", history


class EpochReporter:
    """``train``'s epoch callback: the epoch's report to Tune with the checkpoint, and its history beside it
    (what the driver reads to write the Parquet rows); with the last epoch, the test metrics."""

    def __init__(self, cfg, ckpt_dir: Path, history: list[dict], where: dict, data: PreparedData | None) -> None:
        self.cfg, self.ckpt_dir, self.history, self.where, self.data = cfg, ckpt_dir, history, where, data

    def __call__(self, epoch_report: dict, model) -> None:
        self.history.append(epoch_report)
        with atomic_path(self.ckpt_dir / HISTORY) as tmp:
            tmp.write_text(json.dumps(self.history, default=float))
        # Ray's progress table shows the first four metrics of a result: validation first.
        first = [k for k in ("val_score", "val_image_auroc", "val_pixel_auroc", "loss") if k in epoch_report]
        metrics = {k: float(epoch_report[k]) for k in first}
        metrics.update({k: float(v) for k, v in epoch_report.items()
                        if isinstance(v, (int, float)) and k not in metrics})
        device = next(model.parameters()).device
        metrics.update(self.where, device=str(device), **cuda_memory(device))  # the trial's peak GPU memory so far
        if epoch_report["epoch"] == self.cfg.train.epochs:
            metrics.update(self.test_metrics(model))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self.ckpt_dir)))

    def test_metrics(self, model) -> dict:
        """The trained model on the test split (``test_*``; reported, never used to select)."""
        if self.data is not None and self.data.test is not None:
            samples = self.data.test
        else:  # --no-shared-features: this node reads the test images itself
            samples = make_splits(load_index(self.cfg.data), self.cfg.data).test
        if not samples:
            return {}
        t = time.perf_counter()
        test = evaluate(model, self.cfg, samples, next(model.parameters()).device).metrics
        return {**{f"test_{k}": v for k, v in test.items() if "/" not in k}, "test_s": time.perf_counter() - t}


def release_memory() -> None:
    """After a trial: its objects freed and, on a GPU, the allocator's cache emptied, so that the next trial this
    worker process runs (Ray Tune reuses actors, ``SweepOptions.reuse_actors``) starts from a clean process."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
