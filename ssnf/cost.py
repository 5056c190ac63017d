"""What a detector costs in deployment, measured before it is trained.

Cost does not depend on trained weights: ``measure_cost(cfg)`` builds the config's detector with random
weights (the backbone's architecture without its pretrained file, the flows at their initialisation, the
memory bank given or one of the size the config allows) and times it through ``ssnf.inference.Detector``,
the path ``ssnf predict`` runs: ``uint8`` images at the model's size in, scores and maps out, in the arithmetic
a deployed detector computes in (``backends.DEPLOY_PRECISION``, float32, whatever ``train.precision``), on this
process's threads. Reported: parameters (backbone and flows),
the memory bank's entries, GFLOP per image (``torch.utils.flop_counter``, batch 1) and milliseconds per image
at batch 1 and batch 32 (on one CPU thread in the process's CPU time, so that other processes sharing the
core do not inflate it; on several threads or a GPU in wall-clock time; the fastest of three timed passes of 4 images after two warm-up images at batch 1,
of one timed batch after a warm-up batch at 32: about 5 s for the default detector on one core).

Where the config's scoring is ``auto`` (chosen on validation after training), the cost is that of the most
expensive choice validation may make: the flows' map, plus the bank's with ``bank.enabled`` (a fused map).
A model that validation sends to a cheaper map (the bank's ``knn`` alone) costs less than measured.

The sweep measures every trial on its own node before its first epoch (``ssnf.tune.trainable``), writes the
figures to the trial's row (``cost_*`` columns) and ends a trial over ``--max-ms`` / ``--max-gflops``
there, as ``infeasible``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssnf.config import AUTO, SSNFConfig

if TYPE_CHECKING:  # torch is imported where a cost is measured: ssnf.results reads ``Cost``'s fields without it
    import torch

    from ssnf.model.bank import MemoryBank

BATCHES = (1, 32)  # the batch sizes timed (ms per image each)


@dataclass(frozen=True)
class Cost:
    """One detector's deployment cost (``COST_FIELDS``; Parquet columns ``cost_<field>``)."""

    params: int  # parameters of the backbone and the flows
    bank_entries: int  # memory-bank entries (0: no bank)
    gflops: float  # floating-point operations per image, in 1e9 (the whole path, batch 1)
    infer_ms_b1: float  # ms per image, one image at a time
    infer_ms_b32: float  # ms per image, 32 at a time
    threads: int  # torch CPU threads it was timed with

    @classmethod
    def fields(cls) -> dict[str, type]:
        """Field name -> ``int`` or ``float`` (the Parquet columns' types)."""
        return {f.name: {"int": int, "float": float}.get(f.type, f.type) for f in dataclasses.fields(cls)}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def value(self, name: str) -> float:
        return float(getattr(self, name))


COST_FIELDS = tuple(Cost.fields())


def costliest_scoring(cfg: SSNFConfig) -> SSNFConfig:
    """``cfg`` with each ``auto`` scoring choice replaced by the most expensive one validation may make."""
    s = cfg.scoring
    worst_map = "fused50" if cfg.bank.enabled else "nll"
    scoring = dataclasses.replace(s, map=worst_map if s.map == AUTO else s.map,
                                  image_map="pixel" if s.image_map == AUTO else s.image_map,
                                  image_score="topk" if s.image_score == AUTO else s.image_score)
    return dataclasses.replace(cfg, scoring=scoring)


def bank_size(cfg: SSNFConfig, train_positions: int) -> int:
    """Entries of the bank ``cfg`` builds from ``train_positions`` training positions (``ssnf.model.bank``)."""
    return max(1, min(cfg.bank.max_entries, int(round(cfg.bank.coreset * train_positions))))


def measure_cost(cfg: SSNFConfig, bank: "MemoryBank | None" = None, bank_entries: int = 0, warmup: int = 2,
                 repeats: int = 3, device: "str | torch.device" = "cpu") -> Cost:
    """Time ``cfg``'s detector with random weights (see the module docstring). ``bank``: the model's memory bank
    (its size matters, not its entries); without one and with ``bank.enabled``, a random bank of
    ``bank_entries`` entries (0: ``bank.max_entries``)."""
    import numpy as np
    import torch

    from ssnf.backends import DEPLOY_PRECISION
    from ssnf.devices import synchronize
    from ssnf.inference import Detector
    from ssnf.model.bank import MemoryBank
    from ssnf.model.detector import SSNFModel

    cfg = costliest_scoring(cfg)
    backbone = dataclasses.replace(cfg.backbone, pretrained=False, weights="")
    model = SSNFModel.build(backbone, cfg.model, cfg.train.seed)
    if cfg.bank.enabled:
        if bank is None:
            dims = sum(model.extractor.channels)
            bank = MemoryBank(torch.randn(bank_entries or cfg.bank.max_entries, dims), cfg.bank.neighbourhood)
        model.attach_bank(bank)
    detector = Detector.from_model(model, cfg, device, batch_size=max(BATCHES), precision=DEPLOY_PRECISION)
    size = cfg.data.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(BATCHES), size, size, 3), dtype=np.uint8)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        detector.run(images[:1])
    # one CPU thread: the process's CPU time, which another process sharing the core does not inflate (a sweep's
    # trials are measured while other trials train and the feature store prepares features); else the wall clock
    clock = time.process_time if torch.get_num_threads() == 1 and detector.device.type == "cpu" else time.perf_counter
    ms = {}
    for batch in BATCHES:
        passes = max(1, 4 // batch)  # batch 1: 4 images a timed pass; batch 32: one batch
        for _ in range(warmup if batch == 1 else 1):
            detector.run(images[:batch])
        best = float("inf")
        for _ in range(repeats if batch == 1 else 1):
            t = clock()
            for _ in range(passes):
                detector.run(images[:batch])
            synchronize(detector.device)
            best = min(best, (clock() - t) / (passes * batch))
        ms[batch] = 1000.0 * best
    params = sum(p.numel() for p in model.extractor.parameters()) + sum(p.numel() for p in model.flows.parameters())
    return Cost(params=int(params), bank_entries=int(bank.size) if bank is not None else 0,
                gflops=float(counter.get_total_flops()) / 1e9, infer_ms_b1=ms[1], infer_ms_b32=ms[32],
                threads=torch.get_num_threads())


__all__ = ["BATCHES", "COST_FIELDS", "Cost", "bank_size", "costliest_scoring", "measure_cost"]
