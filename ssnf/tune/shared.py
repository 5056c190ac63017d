"""One prepared feature set per extractor setting, computed once and shared with every trial that uses it.

A sweep may search the feature extractor (``backbone.name``, ``backbone.strides``, ``data.image_size``:
``ssnf.tune.overrides.EXTRACTOR_KEYS``). Each distinct setting needs its own ``PreparedData`` (decoded
images, backbone features, validation set, decoded test split, the extractor with its weights), keyed by
``ssnf.prepared.data_key``. ``FeatureStore`` is one Ray actor per category, pinned to the driver's node (the
only node that needs the dataset and the weights): the first trial that asks for a setting waits while the
store prepares it (the trial's CPU is idle meanwhile, so the preparation runs in its place); the store puts
the result in the object store once and every later trial of that setting fetches it from there. Two trials
asking for the same setting at once wait for one preparation. A trial with a memory bank (``bank.enabled``) also
gets the bank of its setting (``ssnf.model.bank.build_bank``), built by the store on the first such request and
shared the same way (keyed by ``ssnf.prepared.bank_key``). The store records, per setting, the preparation time,
the object's size, the bank's build time and size, and how many trials used it (``stats``): what the sweep
prints and writes to ``<experiment>/results/features/<category>.json``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import ray

from ssnf.config import SSNFConfig, from_dict
from ssnf.data.splits import Splits
from ssnf.prepared import PreparedData, bank_key, data_key


def features_id(cfg: SSNFConfig) -> str:
    """A short name of a config's prepared data (its ``data_key``): the same for every trial that shares it."""
    return hashlib.sha1(data_key(cfg).encode()).hexdigest()[:10]


@dataclass
class SharedData:
    """A reference to one extractor setting's ``PreparedData`` in the object store, its size, and what it cost
    this trial to get it (``prepare_s``: seconds spent waiting for its preparation; 0 when it was ready)."""

    ref: ray.ObjectRef
    nbytes: int
    features_id: str = ""
    prepare_s: float = 0.0
    bank: ray.ObjectRef | None = None  # the setting's MemoryBank (bank.enabled), else None
    bank_bytes: int = 0


def share(data: PreparedData, features: str = "") -> SharedData:
    """Put ``data`` in the object store once (the caller owns it); trials read it from there."""
    ref = ray.put(data)
    info = ray.experimental.get_object_locations([ref]).get(ref) or {}
    return SharedData(ref, int(info.get("object_size") or 0), features)


class FeatureStore:
    """The prepared data of one category's extractor settings (a Ray actor: ``start_store``)."""

    def __init__(self, splits: Splits, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self._splits = splits
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._data: dict[str, SharedData] = {}
        self._banks: dict[str, tuple[ray.ObjectRef, int]] = {}
        self._stats: dict[str, dict] = {}

    def get(self, tree: dict, count: bool = True) -> SharedData:
        """The shared data of config ``tree``'s extractor setting, prepared on the first request (``count``:
        a trial's request; the driver's warm-up is not one)."""
        from ssnf.backbones.extractor import build_extractor
        from ssnf.prepared import prepare_data

        cfg = from_dict(SSNFConfig, tree)
        key = features_id(cfg)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        t = time.perf_counter()
        with lock:
            if key not in self._data:
                data = prepare_data(cfg, build_extractor(cfg.backbone), self._splits, portable=True)
                shared = share(data, key)
                self._data[key] = shared
                self._stats[key] = {
                    "features_id": key, "backbone": cfg.backbone.name, "strides": list(cfg.backbone.strides),
                    "image_size": cfg.data.image_size, "reference": cfg.data.reference,
                    "nuisance": cfg.data.nuisance,
                    "precision": cfg.feature_precision, "prepare_s": round(time.perf_counter() - t, 3),
                    "features_s": round(data.timings.get("features_s", 0.0), 3),
                    "cache_hits": int(data.timings.get("cache_hits", 0)), "bytes": int(shared.nbytes), "trials": 0}
            self._stats[key]["trials"] += int(count)
            bank, bank_bytes = self._bank(cfg, key) if cfg.bank.enabled else (None, 0)
            waited = time.perf_counter() - t
        s = self._data[key]
        return SharedData(s.ref, s.nbytes, key, waited, bank, bank_bytes)

    def _bank(self, cfg: SSNFConfig, key: str) -> tuple[ray.ObjectRef, int]:
        """The memory bank of ``cfg``'s setting (the caller holds the setting's lock), built on the first request."""
        from ssnf.model.bank import build_bank, memory_available

        bkey = hashlib.sha1(bank_key(cfg).encode()).hexdigest()[:10]
        if bkey not in self._banks:
            t = time.perf_counter()
            data: PreparedData = ray.get(self._data[key].ref)
            bank = build_bank(data.train_features, cfg.bank, cfg.data.seed, memory_available())
            ref = ray.put(bank)
            info = ray.experimental.get_object_locations([ref]).get(ref) or {}
            self._banks[bkey] = (ref, int(info.get("object_size") or 0))
            self._stats[key].setdefault("banks", []).append(
                {"bank_id": bkey, "entries": bank.size, "build_s": round(time.perf_counter() - t, 3),
                 "bytes": self._banks[bkey][1]})
        return self._banks[bkey]

    def stats(self) -> list[dict]:
        """Per extractor setting: what it took to prepare, its size in the object store, how many trials used it."""
        return list(self._stats.values())


def start_store(splits: Splits, threads: int = 1):
    """A ``FeatureStore`` actor on this (the driver's) node: only it reads the dataset and the weights. It takes
    no CPU of its own (a trial waiting for it holds one) and serves several settings' requests at once."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_concurrency=8, scheduling_strategy=here)(FeatureStore)
    return actor.remote(splits, threads)
