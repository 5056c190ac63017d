"""Deployment figures (issue 21): inference speed and memory per backend, and thresholds on the test split.

    python bench/deploy.py --models models --data-root ../shared/data --categories tire,magnetic_tile

1. Speed, on the first category's model: the model exported to ONNX and TorchScript (export time, file size),
   then each backend (PyTorch eager in the training precision, PyTorch eager float32, TorchScript, ONNX Runtime)
   at batch 1 and 32, one thread (the reference: anomalib FastFlow, same backbone and size, 42 ms/image at
   batch 1 and 100 ms at batch 32 on one thread): ms/image over real test images already at the model's size
   (``Detector.run``: resize-to-identity, normalise, backbone, flows, map, score), median of the repeats after
   a warm-up, each backend in its own process so that its peak resident memory is its own. Then ``ssnf
   predict`` end to end on the category's test folder (decode, resize, model, and the map/overlay/mask PNGs).
2. Thresholds, per category: the model's threshold (set on validation normals after training) against the test
   split: the false-positive rate on the test normals against the requested one, with its 95 % Clopper-Pearson
   interval, and the false-negative rate on the test defects, per estimate (auto, gumbel, normal, empirical,
   f1) and requested rate (1 %, 5 %); the pixel threshold's rates on the test pixels; the same estimators on
   the validation normals alone (fit on random halves, rate on the other halves: calibration without the
   test split's shift); how many test verdicts the float32 ONNX file and the training-precision checkpoint
   disagree on. Test images set nothing here.

Prints tables; writes ``deploy.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BACKENDS = ("eager", "eager-fp32", "torchscript", "onnx")


def memory() -> dict[str, float]:
    """This process's resident memory now (``VmRSS``) and at its peak (``VmHWM``), MiB, from ``/proc``: unlike
    ``ru_maxrss``, not inherited from the parent that forked it."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def worker(args: argparse.Namespace) -> None:
    """One backend at one batch size in this process: ms/image and peak memory, as JSON on stdout."""
    import torch

    torch.set_num_threads(args.threads)
    from ssnf.inference import Detector

    path = Path(args.file)
    detector = Detector.load(path, batch_size=args.batch, threads=args.threads)
    loaded = memory()["VmRSS"]
    if args.backend == "eager-fp32":
        detector.model.set_precision("fp32")
    images = np.load(args.images)
    batch = images[np.arange(args.batch) % len(images)]
    t = time.perf_counter()
    detector.run(batch)  # warm-up (ONNX Runtime and TorchScript optimise on the first call)
    warm = time.perf_counter() - t
    times = []
    deadline = time.perf_counter() + args.seconds
    while len(times) < args.repeats or (time.perf_counter() < deadline and len(times) < 50):
        t = time.perf_counter()
        detector.run(batch)
        times.append(time.perf_counter() - t)
    peak = memory()["VmHWM"]
    print(json.dumps({"backend": args.backend, "batch": args.batch, "threads": args.threads,
                      "ms_per_image": 1e3 * float(np.median(times)) / args.batch,
                      "ms_per_image_min": 1e3 * float(np.min(times)) / args.batch, "repeats": len(times),
                      "first_call_s": warm, "peak_rss_mib": peak, "loaded_rss_mib": loaded}))


def speed(checkpoint: Path, test_dir: Path, threads: int, tmp: Path) -> dict:
    from ssnf.data.io import list_images
    from ssnf.export import export
    from ssnf.inference import Detector

    detector = Detector.load(checkpoint)
    files = {"eager": checkpoint, "eager-fp32": checkpoint}
    exports = {}
    for fmt, name in (("torchscript", "model.torchscript"), ("onnx", "model.onnx")):
        t = time.perf_counter()
        export(detector, tmp / name, fmt)
        exports[fmt] = {"export_s": time.perf_counter() - t, "mib": (tmp / name).stat().st_size / 2**20}
        files[fmt] = tmp / name
        print(f"export {fmt}: {exports[fmt]['export_s']:.1f} s (verified), {exports[fmt]['mib']:.1f} MiB")
    paths = sorted(p for folder in sorted(test_dir.iterdir()) if folder.is_dir() for p in list_images(folder))[:32]
    np.save(tmp / "images.npy", detector.prepare(paths))
    rows = []
    for backend in BACKENDS:
        for batch in (1, 32):
            cmd = [sys.executable, __file__, "--worker", "--backend", backend, "--file", str(files[backend]),
                   "--images", str(tmp / "images.npy"), "--batch", str(batch), "--threads", str(threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            if proc.returncode:
                raise SystemExit(f"{backend} batch {batch} failed: {proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {backend:<12} batch {batch:>2}: {row['ms_per_image']:7.1f} ms/image (min {row['ms_per_image_min']:.1f}, "
                  f"{row['repeats']} runs), resident {row['loaded_rss_mib']:.0f} MiB loaded, peak {row['peak_rss_mib']:.0f} MiB")
    out = tmp / "predict-run"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ssnf", "predict", "--checkpoint", str(checkpoint), str(test_dir),
                           "--out", str(out), "--quiet", "--threads", str(threads), "--batch-size", "16"],
                          capture_output=True, text=True, timeout=3600, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise SystemExit(f"ssnf predict failed: {proc.stderr[-2000:]}")
    import pandas as pd

    table = pd.read_parquet(out / "predictions.parquet")
    ok = table[table.status == "ok"]
    end_to_end = {"images": len(ok), "wall_s": wall, "ms_per_image": 1e3 * wall / len(ok),
                  "model_ms_per_image": float(ok.time_ms.mean()), "io_ms_per_image": float(ok.io_ms.mean()),
                  "threads": threads, "batch": 16}
    print(f"  ssnf predict on {len(ok)} test images: {end_to_end['ms_per_image']:.0f} ms/image end to end "
          f"(process start included), model {end_to_end['model_ms_per_image']:.0f} ms, decode + resize + PNGs "
          f"{end_to_end['io_ms_per_image']:.0f} ms")
    return {"exports": exports, "backends": rows, "predict": end_to_end}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def half_splits(base, rounds: int = 500, seed: int = 0) -> list[dict]:
    """The estimators on validation normals alone: fit on a random half, count the other half above it;
    averaged over ``rounds`` splits, the exceedance rate an estimate fitted on n/2 normals has on new normals
    of the same session (no test image, no shift between sessions)."""
    from ssnf.config import ThresholdConfig
    from ssnf.threshold import image_threshold

    scores = np.asarray(base.normal_scores)
    if len(scores) < 4:
        print(f"  validation half-splits: {len(scores)} normals, too few to split")
        return []
    rng = np.random.default_rng(seed)
    rows = []
    for fpr in (0.01, 0.05):
        for method in ("gumbel", "normal", "empirical"):
            cfg = ThresholdConfig(fpr=fpr, method=method)
            above = []
            for _ in range(rounds):
                order = rng.permutation(len(scores))
                fit, check = scores[order[:len(scores) // 2]], scores[order[len(scores) // 2:]]
                value, _ = image_threshold(fit, np.zeros(0), cfg)
                above.append(float((check > value).mean()))
            rows.append({"requested_fpr": fpr, "method": method, "fit_on": len(scores) // 2,
                         "held_out_fpr": float(np.mean(above))})
            print(f"  validation half-splits ({len(scores) // 2} fit, {len(scores) - len(scores) // 2} held out, "
                  f"{rounds} splits): requested {fpr:.0%} {method:<9} -> {np.mean(above):.3f}")
    return rows


def thresholds(checkpoint: Path, data_root: Path | None, tmp: Path) -> dict:
    import dataclasses

    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.evaluate import evaluate
    from ssnf.export import export
    from ssnf.inference import Detector
    from ssnf.threshold import rates

    detector = Detector.load(checkpoint)
    cfg = detector.cfg
    data = dataclasses.replace(cfg.data, root=str(data_root) if data_root else cfg.data.root)
    splits = make_splits(load_index(data), data)
    ev = evaluate(detector.model, cfg, splits.test)
    labels = ev.labels
    base = detector.threshold
    normal_test = ev.scores[labels == 0]
    result = {"category": data.category, "n_val_normals": base.n_normals, "n_test_normals": int((labels == 0).sum()),
              "n_test_defects": int((labels == 1).sum()), "image_auroc": ev.metrics["image_auroc"],
              "val_normal_median": float(np.median(base.normal_scores)),
              "test_normal_median": float(np.median(normal_test)), "rows": []}
    print(f"{data.category}: {base.n_normals} validation normals; test {result['n_test_normals']} normals, "
          f"{result['n_test_defects']} defects; image AUROC {ev.metrics['image_auroc']:.3f}; median normal score "
          f"validation {result['val_normal_median']:.4f}, test {result['test_normal_median']:.4f}")
    for fpr in (0.01, 0.05):
        for method in ("auto", "gumbel", "normal", "empirical", "f1"):
            th = base.at(fpr=fpr, pixel_fpr=fpr, method=method)
            at = rates(ev.scores, labels, th.image)
            k = int((normal_test > th.image).sum())
            lo, hi = clopper_pearson(k, len(normal_test))
            pixel = rates(ev.maps.ravel(), ev.masks.ravel().astype(int), th.pixel)
            row = {"requested_fpr": fpr, "method": method, "used": th.method, "image_threshold": th.image,
                   "test_fpr": at["fpr"], "test_fpr_ci": [lo, hi], "false_positives": k, "test_fnr": at["fnr"],
                   "pixel_threshold": th.pixel, "pixel_test_fpr": pixel["fpr"], "pixel_test_fnr": pixel["fnr"]}
            result["rows"].append(row)
            print(f"  requested {fpr:.0%} {method:<9} ({th.method:<9}) threshold {th.image:8.4f}: test FPR "
                  f"{at['fpr']:.3f} ({k}/{len(normal_test)}, 95 % CI {lo:.3f}-{hi:.3f}), FNR {at['fnr']:.3f}; "
                  f"pixels FPR {pixel['fpr']:.4f}, FNR {pixel['fnr']:.3f}")
    result["half_splits"] = half_splits(base)
    if "fp32" in detector.thresholds and base.precision != "fp32":
        print("  the same on the float32 scores (what exported files threshold):")
        result["half_splits_fp32"] = half_splits(detector.thresholds["fp32"])
    onnx = tmp / f"{data.category}.onnx"
    export(detector, onnx, "onnx")
    exported = Detector.load(onnx).predict([s.image for s in splits.test])
    eager = detector.predict([s.image for s in splits.test])
    result["onnx_vs_checkpoint"] = {
        "precision": cfg.train.precision, "max_score_diff": float(np.abs(exported.scores - eager.scores).max()),
        "verdicts_differ": int((exported.anomalous != eager.anomalous).sum()), "images": len(eager.scores)}
    print(f"  ONNX (float32) vs checkpoint ({cfg.train.precision}): scores differ by up to "
          f"{result['onnx_vs_checkpoint']['max_score_diff']:.4f}, verdicts differ on "
          f"{result['onnx_vs_checkpoint']['verdicts_differ']} of {len(eager.scores)} test images")
    return result


def resize_check(checkpoint: Path, data_root: Path | None, tmp: Path, count: int = 40) -> dict:
    """An exported file fed the images at their own size (its in-graph torch resize) against the same file fed
    images resized on the host as in training (PIL, what ``ssnf predict`` and ``Detector`` do)."""
    import dataclasses

    from ssnf.data.io import read_image
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.export import export
    from ssnf.inference import Detector

    detector = Detector.load(checkpoint)
    cfg = detector.cfg
    data = dataclasses.replace(cfg.data, root=str(data_root) if data_root else cfg.data.root)
    test = make_splits(load_index(data), data).test[:count]
    onnx = tmp / f"{data.category}-resize.onnx"
    export(detector, onnx, "onnx")
    exported = Detector.load(onnx)
    host, graph = [], []
    for sample in test:
        raw = read_image(sample.image)
        host.append(exported.run(exported.prepare([raw]))[0][0])
        graph.append(exported.run(raw[None])[0][0])
    host, graph = np.array(host), np.array(graph)
    cut = exported.threshold.image
    result = {"category": data.category, "images": len(test), "size": list(read_image(test[0].image).shape[:2]),
              "max_score_diff": float(np.abs(host - graph).max()),
              "median_score_diff": float(np.median(np.abs(host - graph))),
              "score_spread": float(np.std(host)), "verdicts_differ": int(((host > cut) != (graph > cut)).sum())}
    print(f"  {data.category}: in-graph resize vs host (PIL) resize on {len(test)} test images "
          f"({result['size'][1]}x{result['size'][0]}): scores differ by up to {result['max_score_diff']:.4f} "
          f"(median {result['median_score_diff']:.4f}; the scores' spread {result['score_spread']:.4f}), "
          f"{result['verdicts_differ']} verdicts differ")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="models")
    parser.add_argument("--data-root", help="where the datasets are (default: the models' config)")
    parser.add_argument("--categories", default="tire,magnetic_tile")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/issue21")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-thresholds", action="store_true")
    parser.add_argument("--resize-check", action="store_true",
                        help="only: exported files fed images at their own size vs resized on the host")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    categories = [c for c in args.categories.split(",") if c]
    models = Path(args.models)
    report: dict = {"machine": f"{os.cpu_count()} CPUs", "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.resize_check:
            rows = [resize_check(models / c / "checkpoint.pt", Path(args.data_root) if args.data_root else None, tmp)
                    for c in categories]
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "resize.json").write_text(json.dumps(rows, indent=2))
            return print(f"wrote {out / 'resize.json'}")
        if not args.skip_speed:
            from ssnf.inference import Detector

            first = models / categories[0] / "checkpoint.pt"
            cfg = Detector.load(first).cfg
            root = Path(args.data_root) if args.data_root else Path(cfg.data.root)
            print(f"speed: {categories[0]} model ({cfg.backbone.name}, {cfg.data.image_size} px, "
                  f"{cfg.train.precision}), {args.threads} thread(s)")
            report["speed"] = {"category": categories[0], **speed(first, root / categories[0] / "test", args.threads, tmp)}
        if args.skip_thresholds:
            categories = []
        report["thresholds"] = [thresholds(models / c / "checkpoint.pt", Path(args.data_root) if args.data_root else None,
                                           tmp) for c in categories]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "deploy.json" if not (args.skip_speed or args.skip_thresholds) else \
        ("speed.json" if args.skip_thresholds else "thresholds.json")
    (out / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
