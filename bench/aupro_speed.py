"""AUPRO and pixel AUROC speed on 100 anomaly maps of 256x256 (the issue's target: seconds on 2 CPUs).

    .venv/bin/python bench/aupro_speed.py [--n 100] [--size 256] [--repeats 5]

Prints the median and the best wall time of each metric over the repeats, and the values, which are
checked against each other for the full-curve and truncated-curve AUPRO paths.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ssnf.metrics import aupro, pixel_auroc
from ssnf.metrics.pro import area_up_to, pro_curve


def synthetic(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half the maps carry 1-3 rectangular defects; scores are noise plus a bump on the defects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 40, 2)
            masks[i, y:y + rng.integers(4, 40), x:x + rng.integers(4, 40)] = True
    maps = (rng.random(masks.shape) + masks * rng.uniform(0.2, 0.8)).astype(np.float32)
    return masks, maps


def timed(fn, repeats: int) -> tuple[float, float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    masks, maps = synthetic(args.n, args.size)
    print(f"{args.n} maps of {args.size}x{args.size} ({masks.sum()} anomalous pixels), {args.repeats} repeats")
    med, best, value = timed(lambda: aupro(masks, maps), args.repeats)
    print(f"AUPRO (fpr <= 0.3)         median {med:.3f} s  best {best:.3f} s  value {value:.6f}")
    med_f, best_f, full = timed(lambda: area_up_to(*pro_curve(masks, maps), 0.3) / 0.3, args.repeats)
    print(f"AUPRO via the full curve   median {med_f:.3f} s  best {best_f:.3f} s  value {full:.6f}")
    assert abs(full - value) < 1e-9, "truncated and full PRO curves disagree"
    med, best, value = timed(lambda: pixel_auroc(masks, maps), args.repeats)
    print(f"pixel AUROC                median {med:.3f} s  best {best:.3f} s  value {value:.6f}")


if __name__ == "__main__":
    main()
