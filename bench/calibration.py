"""Thresholds a line can trust (issue 32): the promise of calibration on good parts, the drift alarm, and one
verdict per model whatever runs it.

    python bench/calibration.py --models models --data-root ../shared/data --categories tire,magnetic_tile \
        --out bench/results/issue32

Per category, with the model in ``MODELS/<category>/checkpoint.pt`` (copied: the original is not touched):

1. The model is calibrated on its validation normals again (``ssnf calibrate``: today's method, ``auto``), so that
   its thresholds keep the normals' image statistics; the test split is scored once through the deployed
   detector (float32) and once in the training precision.
2. **Calibration on good parts** (the line's own good images; here the test split's good images, which nothing
   here chooses anything from): ``--halves`` random halves (seed 0; half A = a random ``floor(n / 2)`` of the
   test good images, half B the rest). Thresholds are set on A with ``conformal`` at 1 % and 5 % (the same
   ``ssnf.threshold.fit_threshold`` that ``ssnf calibrate --normals`` calls); where A is too few for the promise,
   the one-line refusal is recorded and ``auto`` (no promise) is set instead, as a user would ask. Counted on B:
   the image FPR, the pixel FPR (B's pixels above the pixel threshold, at the model's size), and the FNR on
   every test defect. Reported: the mean held-out FPR, the share of halves whose FPR exceeds the request (the
   promise: at most delta = 5 %), and the share whose count lies above the request's binomial 95 % band.
3. **Validation calibration** (today's): the checkpoint's float32 thresholds at 1 % and 5 % on all test goods,
   with Clopper-Pearson intervals.
4. **The drift alarm**: the training-session calibration (validation normals) against all test good images,
   and against each half B; calibration on half A against half B (good parts of one session: how often it
   fires falsely).
5. **Good parts under nuisance change**: half B of the test good images under each of ``bench/robustness.py``'s
   fixed shifts (lighting, contrast, gamma, colour, blur, noise, position): the share flagged and whether the
   alarm fires, with the validation calibration and with half A's.
6. **One verdict**: the model exported to ONNX; every test image scored by the checkpoint (default float32) and
   by the file: verdicts that differ, largest relative score difference; the same count for the checkpoint in
   its training precision (the behaviour before). Speed of each at batch 1 and 32 on one thread, one process.

Prints tables; writes ``calibration-<category>.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATES = (0.01, 0.05)


def interval(k: int, n: int) -> list[float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="exact")
    return [float(ci.low), float(ci.high)]


def band_high(rate: float, n: int) -> int:
    """The largest count of n that a true rate ``rate`` gives within its two-sided 95 % binomial band."""
    from scipy.stats import binom

    return int(binom.ppf(0.975, n, rate))


def scored(detector, split) -> dict:
    """Scores, maps and image statistics of a decoded split through ``detector``."""
    prediction = detector.predict(split.images)
    return {"scores": prediction.scores, "maps": prediction.maps, "stats": prediction.stats}


def fit(scores, maps, stats, rate: float, method: str):
    from ssnf.config import ThresholdConfig
    from ssnf.threshold import fit_threshold

    cfg = ThresholdConfig(fpr=rate, pixel_fpr=rate, method=method)
    return fit_threshold(scores, np.zeros(0), maps, cfg, "fp32", {}, stats, source="calibration")


def halves(test: dict, labels: np.ndarray, rounds: int) -> dict:
    """Calibration on half the test good images, counted on the other half (section 2 and the false alarms)."""
    from ssnf.drift import check
    from ssnf.errors import ConfigError

    good = np.flatnonzero(labels == 0)
    defects = test["scores"][labels == 1]
    rng = np.random.default_rng(0)
    out = {}
    for rate in RATES:
        rows, refused = [], None
        for _ in range(rounds):
            order = rng.permutation(good)
            a, b = order[:len(good) // 2], order[len(good) // 2:]
            stats_a = {k: v[a] for k, v in test["stats"].items()}
            try:
                threshold = fit(test["scores"][a], test["maps"][a], stats_a, rate, "conformal")
            except ConfigError as exc:  # too few for the promise: what a user asks next, no promise
                refused = str(exc)
                threshold = fit(test["scores"][a], test["maps"][a], stats_a, rate, "auto")
            flagged = int((test["scores"][b] > threshold.image).sum())
            alarm = check(threshold, test["scores"][b], {k: v[b] for k, v in test["stats"].items()})
            rows.append({"method": threshold.method, "image_fpr": flagged / len(b), "flagged": flagged,
                         "pixel_fpr": float((test["maps"][b] > threshold.pixel).mean()),
                         "fnr": float((defects <= threshold.image).mean()), "alarm": alarm.fired,
                         "over_band": flagged > band_high(rate, len(b))})
        out[str(rate)] = summarize(rows, rate, refused, len(good) // 2, len(good) - len(good) // 2)
    return out


def summarize(rows: list[dict], rate: float, refused: str | None, n_a: int, n_b: int) -> dict:
    image = np.array([r["image_fpr"] for r in rows])
    return {"n_calibration": n_a, "n_held_out": n_b, "refused": refused,
            "methods": sorted({r["method"] for r in rows}), "mean_image_fpr": float(image.mean()),
            "share_over_request": float((image > rate).mean()),
            "share_over_band": float(np.mean([r["over_band"] for r in rows])),
            "mean_pixel_fpr": float(np.mean([r["pixel_fpr"] for r in rows])),
            "mean_fnr": float(np.mean([r["fnr"] for r in rows])),
            "false_alarms": float(np.mean([r["alarm"] for r in rows])), "rounds": len(rows)}


def validation_rows(base, test: dict, labels: np.ndarray) -> list[dict]:
    """Section 3: the validation-normal thresholds (float32) on all test goods."""
    from ssnf.errors import ConfigError

    good = test["scores"][labels == 0]
    rows = []
    for rate in RATES:
        for method in ("auto", "conformal"):
            try:
                th = base.at(fpr=rate, pixel_fpr=rate, method=method)
            except ConfigError as exc:
                rows.append({"rate": rate, "method": method, "refused": str(exc)})
                continue
            k = int((good > th.image).sum())
            rows.append({"rate": rate, "method": th.method, "image_fpr": k / len(good), "flagged": k,
                         "ci95": interval(k, len(good)),
                         "pixel_fpr": float((test["maps"][labels == 0] > th.pixel).mean()),
                         "fnr": float((test["scores"][labels == 1] <= th.image).mean())})
    return rows


def alarms(base, test: dict, labels: np.ndarray, rounds: int) -> dict:
    """Section 4, the training-session calibration: all test goods, and random halves of them."""
    from ssnf.drift import check

    good = np.flatnonzero(labels == 0)
    whole = check(base, test["scores"][good], {k: v[good] for k, v in test["stats"].items()})
    rng = np.random.default_rng(1)
    fired = [check(base, test["scores"][b], {k: v[b] for k, v in test["stats"].items()}).fired
             for b in (rng.permutation(good)[len(good) // 2:] for _ in range(rounds))]
    return {"all_test_goods": whole.to_dict(), "share_of_halves_fired": float(np.mean(fired))}


def nuisance(detector, images: np.ndarray, test: dict, labels: np.ndarray) -> dict:
    """Section 5: good parts under nuisance change (``bench/robustness.py``'s fixed shifts, on half B of the test
    good images): the share flagged and whether the drift alarm fires, against the validation calibration (its 1 %
    threshold) and against half A's calibration at 5 % (conformal where half A is enough, else ``auto``)."""
    from bench.robustness import SHIFTS, shifted
    from ssnf.drift import check
    from ssnf.errors import ConfigError

    good = np.flatnonzero(labels == 0)
    order = np.random.default_rng(2).permutation(good)
    a, b = order[:len(good) // 2], order[len(good) // 2:]
    stats_a = {k: v[a] for k, v in test["stats"].items()}
    try:
        half = fit(test["scores"][a], test["maps"][a], stats_a, 0.05, "conformal")
    except ConfigError:
        half = fit(test["scores"][a], test["maps"][a], stats_a, 0.05, "auto")
    rows = {}
    for name in ("none", *SHIFTS):
        seen = detector.predict(images[b] if name == "none" else shifted(images[b], name))
        rows[name] = {"validation_fpr": float((seen.scores > detector.threshold.image).mean()),
                      "validation_alarm": check(detector.threshold, seen.scores, seen.stats).fired,
                      "half_fpr": float((seen.scores > half.image).mean()),
                      "half_alarm": check(half, seen.scores, seen.stats).fired}
    return {"n_images": len(b), "half_method": half.method, "rows": rows}


def agreement(ckpt: Path, test_images: np.ndarray, tmp: Path) -> dict:
    """Section 6: checkpoint (float32 default, and bf16) against its ONNX export, verdicts and speed."""
    from ssnf.export import export
    from ssnf.inference import Detector

    t = time.perf_counter()
    onnx = tmp / "model.onnx"
    export(Detector.load(ckpt), onnx, "onnx")
    export_s = time.perf_counter() - t
    runs = {}
    for name, path, precision in (("checkpoint_fp32", ckpt, "fp32"), ("checkpoint_bf16", ckpt, "bf16"),
                                  ("onnx", onnx, "fp32")):
        detector = Detector.load(path, precision=precision, threads=1, batch_size=32)
        prediction = detector.predict(test_images)
        runs[name] = {"scores": prediction.scores, "verdicts": prediction.anomalous,
                      "ms": {b: timed(detector, test_images, b) for b in (1, 32)}}
    ref = runs["onnx"]
    result = {"export_s": export_s}
    for name in ("checkpoint_fp32", "checkpoint_bf16"):
        run = runs[name]
        rel = np.abs(run["scores"] - ref["scores"]) / np.maximum(np.abs(ref["scores"]), 1e-12)
        result[name] = {"verdicts_differ": int((run["verdicts"] != ref["verdicts"]).sum()),
                        "max_rel_score_diff": float(rel.max()), "ms_per_image": run["ms"]}
    result["onnx"] = {"ms_per_image": ref["ms"]}
    result["n_images"] = len(test_images)
    return result


def timed(detector, images: np.ndarray, batch: int, repeats: int = 3) -> float:
    batch_images = images[np.arange(batch) % len(images)]
    detector.run(batch_images)
    times = []
    for _ in range(repeats if batch > 1 else 3 * repeats):
        t = time.perf_counter()
        detector.run(batch_images)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)) / batch


def category(models: Path, data_root: Path, name: str, rounds: int, tmp: Path) -> dict:
    import dataclasses

    import torch

    from ssnf.calibration import calibrate_on_validation
    from ssnf.data.dataset import decode_split
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.inference import Detector
    from ssnf.metrics.roc import image_auroc

    torch.set_num_threads(1)
    ckpt = tmp / f"{name}.pt"
    shutil.copy(models / name / "checkpoint.pt", ckpt)
    detector = Detector.load(ckpt)
    calibrate_on_validation(detector, detector.cfg.threshold, str(data_root))
    data = dataclasses.replace(detector.cfg.data, root=str(data_root))
    split = decode_split(make_splits(load_index(data), data).test, data.image_size)
    labels = np.array([s.label for s in split.samples])
    test = scored(detector, split)
    bf16 = Detector.load(ckpt, precision="bf16").predict(split.images).scores
    result = {"category": name, "n_validation_normals": detector.threshold.n_normals,
              "n_test_good": int((labels == 0).sum()), "n_test_defects": int((labels == 1).sum()),
              "image_auroc": {"fp32": image_auroc(labels, test["scores"]), "bf16": image_auroc(labels, bf16)},
              "validation": validation_rows(detector.threshold, test, labels),
              "halves": halves(test, labels, rounds),
              "alarm_training_session": alarms(detector.threshold, test, labels, rounds),
              "nuisance": nuisance(detector, split.images, test, labels)}
    result["agreement"] = agreement(ckpt, split.images, tmp)
    return result


def report(result: dict) -> None:
    c = result["category"]
    print(f"\n== {c}: {result['n_validation_normals']} validation normals, test {result['n_test_good']} good / "
          f"{result['n_test_defects']} defective; image AUROC fp32 {result['image_auroc']['fp32']:.3f}, bf16 "
          f"{result['image_auroc']['bf16']:.3f}")
    print("calibration on half the test goods, counted on the other half:")
    for rate, h in result["halves"].items():
        print(f"  {float(rate):.0%}: n={h['n_calibration']} -> {'/'.join(h['methods'])}; held-out image FPR "
              f"{h['mean_image_fpr']:.3f} (over the request in {h['share_over_request']:.0%} of halves, over its "
              f"band in {h['share_over_band']:.0%}), pixel FPR {h['mean_pixel_fpr']:.4f}, FNR {h['mean_fnr']:.3f}, "
              f"drift alarm {h['false_alarms']:.1%} of halves")
        if h["refused"]:
            print(f"     refused: {h['refused']}")
    print("validation calibration on all test goods:")
    for row in result["validation"]:
        if "refused" in row:
            print(f"  {row['rate']:.0%} {row['method']}: refused ({row['refused'][:90]}...)")
        else:
            print(f"  {row['rate']:.0%} {row['method']}: image FPR {row['image_fpr']:.3f} ({row['flagged']}/"
                  f"{result['n_test_good']}, 95 % {row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}), pixel FPR "
                  f"{row['pixel_fpr']:.4f}, FNR {row['fnr']:.3f}")
    a = result["alarm_training_session"]
    print(f"drift alarm, training-session calibration vs all test goods: fired={a['all_test_goods']['fired']}; "
          f"{' | '.join(a['all_test_goods']['message'])}")
    print(f"  vs random halves of the test goods: fired in {a['share_of_halves_fired']:.0%}")
    n = result["nuisance"]
    print(f"good parts under nuisance change ({n['n_images']} test goods; half-A threshold: {n['half_method']} at 5 %):")
    for name, row in n["rows"].items():
        print(f"  {name:<16} flagged: validation 1 % {row['validation_fpr']:.2f}, half-A 5 % {row['half_fpr']:.2f}; "
              f"drift alarm: validation {'FIRES' if row['validation_alarm'] else 'quiet'}, half-A "
              f"{'FIRES' if row['half_alarm'] else 'quiet'}")
    g = result["agreement"]
    for name in ("checkpoint_fp32", "checkpoint_bf16"):
        r = g[name]
        print(f"{name} vs ONNX: {r['verdicts_differ']} of {g['n_images']} verdicts differ, max relative score "
              f"difference {r['max_rel_score_diff']:.2e}; ms/image b1 {r['ms_per_image'][1]:.1f}, b32 "
              f"{r['ms_per_image'][32]:.1f}")
    print(f"onnx: ms/image b1 {g['onnx']['ms_per_image'][1]:.1f}, b32 {g['onnx']['ms_per_image'][32]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--categories", default="tire,magnetic_tile")
    parser.add_argument("--halves", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "issue32")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in [c for c in args.categories.split(",") if c]:
            result = category(args.models, args.data_root, name, args.halves, Path(tmp))
            report(result)
            path = args.out / f"calibration-{name}.json"
            path.write_text(json.dumps(result, indent=1, default=float))
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
