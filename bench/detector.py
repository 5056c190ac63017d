"""Detector quality on the real categories: the default against its ablations (``bench/configs/*.yaml``).

    .venv/bin/python bench/detector.py quality [--categories tire,magnetic_tile] [--epochs 20]
    .venv/bin/python bench/detector.py rescore [--categories ...] [--variants ...] [--seeds 0,1]  # after a scoring change
    .venv/bin/python bench/detector.py table   # print the tables of everything measured so far
    .venv/bin/python bench/detector.py curves [--categories tire]  # validation per epoch of every run
    .venv/bin/python bench/detector.py summary # the runs' JSONs -> quality.json, the copy git keeps

Quality: pretrained mobilenetv2_100 at 256x256, a fixed epoch budget, the *last* epoch's model, test
metrics computed once at the end (nothing is selected on test). One JSON per run in --out
(``quality-<category>-<variant>[-seedN].json``), so an interrupted benchmark resumes where it stopped (delete a
JSON to rerun it). Those JSONs are the raw output (``.gitignore`` keeps them out of git); ``summary`` folds them
into ``--out/quality.json``, and ``table`` / ``curves`` read both, a run's own JSON over its copy there. The
copy leaves out the config tree (``bench/configs/<variant>.yaml`` over the base, at the run's commit), keeps the
history per key (six significant digits; validation's candidates of the last epoch only) and each test image's
score as the float32 it was, the images listed once per category.

A variant is a config file: ``--variants default,w0`` reads ``bench/configs/default.yaml`` and
``bench/configs/w0.yaml`` over the benchmark's base. Speed: ``bench/speed.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from operator import itemgetter
from pathlib import Path

import numpy
import torch

from ssnf.checkpoint import load_checkpoint
from ssnf.config import ScoringConfig, SSNFConfig, to_dict, with_overrides
from ssnf.configfile import load_config
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.evaluate import evaluate
from ssnf.metrics import paired_auroc_difference
from ssnf.prepared import prepare_data
from ssnf.scoring import image_map_kind
from ssnf.training import train
from ssnf.validation import validate

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"  # one variant = one config file (a partial config tree): bench/configs/<variant>.yaml


def variant_config(data_root: str, category: str, epochs: int, variant: str) -> SSNFConfig:
    """The benchmark's base (256 px, mobilenetv2_100, ``epochs``), then ``bench/configs/<variant>.yaml``."""
    path = CONFIGS / f"{variant}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise SystemExit(f"no variant {variant!r}: no {path} (known: {known})")
    return load_config(str(path), ["data.image_size=256", "backbone.name=mobilenetv2_100", f"train.epochs={epochs}"],
                       data_root, category)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_quality(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for category in args.categories.split(","):
        for variant in args.variants.split(","):
            name = f"{category}-{variant}" + (f"-seed{args.seed}" if args.seed else "")
            path = out / f"quality-{name}.json"
            if path.is_file():
                print(f"{path.name}: done already")
                continue
            cfg = variant_config(args.data_root, category, args.epochs, variant)
            if args.seed:  # another seed for the flows' init, permutations, batches and synthesis
                cfg = with_overrides(cfg, train={"seed": args.seed})
            print(f"training {category} / {variant} (seed {cfg.train.seed}) for {args.epochs} epochs", flush=True)
            result = train(cfg, out_dir=out / "checkpoints" / name, progress=False,
                           callback=print_epoch)
            test_and_write(path, category, variant, cfg, result.model, result.splits.test, result.history,
                           timings=result.timings)


def test_and_write(path: Path, category: str, variant: str, cfg: SSNFConfig, model, samples, history: list[dict],
                   **extra) -> None:
    """Score the test split once and write the run's JSON (read by ``table``)."""
    t = time.perf_counter()
    ev = evaluate(model, cfg, samples)
    root = Path(cfg.data.root)
    images = [{"image": str(s.image.relative_to(root) if s.image.is_relative_to(root) else s.image),
               "label": int(s.label), "defect": s.defect, "score": float(v)} for s, v in zip(ev.samples, ev.scores)]
    payload = {"category": category, "variant": variant, "seed": cfg.train.seed, "config": to_dict(cfg),
               "test": ev.metrics, "scoring": to_dict(ev.scoring), "test_eval_s": time.perf_counter() - t,
               "history": history, **extra, "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
               "test_images": images}
    path.write_text(json.dumps(payload, indent=2))
    print(f"{category} / {variant} (pixel map {ev.scoring.map}, image {ev.scoring.image_score} of "
          f"{image_map_kind(ev.scoring)}): "
          + ", ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items() if "/" not in k), flush=True)


def print_epoch(report: dict, _model) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()
                      if k not in ("val_candidates", "val_switch")}), flush=True)


def run_rescore(args) -> None:
    """Re-score the quality runs' checkpoints under the current scoring defaults.

    Training does not depend on ``scoring`` (nothing in the loop reads it, and validation draws no random
    numbers), so this gives the figures a fresh ``quality`` run would, without retraining: the choice of
    the ``auto`` settings is made on validation at the last epoch, then the test split is scored once.
    """
    out = Path(args.out)
    seeds = [int(x) for x in (args.seeds or str(args.seed)).split(",")]
    for category in args.categories.split(","):
        for variant in args.variants.split(","):
            for seed in seeds:
                rescore_one(out, category, variant, seed)


def rescore_one(out: Path, category: str, variant: str, seed: int) -> None:
    name = f"{category}-{variant}" + (f"-seed{seed}" if seed else "")
    ckpt_path = out / "checkpoints" / name / "checkpoint.pt"
    if not ckpt_path.is_file():
        print(f"{ckpt_path}: missing, run quality first")
        return
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.epoch != ckpt.config.train.epochs:
        print(f"{ckpt_path}: only {ckpt.epoch} of {ckpt.config.train.epochs} epochs trained, skipped")
        return
    cfg = dataclasses.replace(ckpt.config, scoring=ScoringConfig())
    model = ckpt.model.eval()
    data = prepare_data(cfg, model.extractor, make_splits(load_index(cfg.data), cfg.data))
    val = validate(model, data.validation, cfg.scoring, cfg.data.image_size, "cpu")
    history = ckpt.history
    if history:  # the last epoch's validation as it is now; what training saw is kept beside it
        before = {k: history[-1].get(k) for k in ("val_image_auroc", "val_pixel_auroc", "val_score", "val_map",
                                                  "val_image_map", "val_image_score")}
        history[-1] = {**history[-1], "val_at_training": history[-1].get("val_at_training", before), **val}
    path = out / f"quality-{name}.json"
    kept = {k: v for k, v in json.loads(path.read_text()).items() if k in ("timings",)} if path.is_file() else {}
    test_and_write(path, category, variant, cfg, model, data.splits.test, history,
                   rescored_from=str(ckpt_path.relative_to(out)), **kept)


SUMMARY = "quality.json"
DROPPED = ("config", "rescored_from")  # the config is bench/configs/<variant>.yaml over the base, at the run's commit
LAST_EPOCH_ONLY = ("val_candidates", "val_switch", "val_at_training")  # kept whole, of the last epoch


def run_key(r: dict) -> str:
    """A run's name, as in its JSON's file name."""
    return f"{r['category']}-{r['variant']}" + (f"-seed{r['seed']}" if r.get("seed") else "")


def load_runs(out: Path, category: str = "") -> list[dict]:
    """Every quality run in ``out``: those in ``quality.json``, then the runs' own JSONs (which win), by name."""
    runs: dict[str, dict] = {}
    if (out / SUMMARY).is_file():
        runs = {run_key(r): r for r in expand_summary(json.loads((out / SUMMARY).read_text()))}
    for path in sorted(out.glob("quality-*.json")):
        r = json.loads(path.read_text())
        runs[run_key(r)] = r
    return [runs[k] for k in sorted(runs) if not category or runs[k]["category"] == category]


def compact_summary(runs: list[dict]) -> dict:
    """The runs without their config trees and early epochs' candidates; test images listed once per category,
    each run keeping its scores in that order (``test_scores``)."""
    images: dict[str, list] = {}
    kept = []
    for r in runs:
        r = {k: v for k, v in r.items() if k not in DROPPED}
        history = r.pop("history")
        keys = dict.fromkeys(k for e in history for k in e if k not in LAST_EPOCH_ONLY)
        r["history"] = {k: [short(e.get(k)) for e in history] for k in keys}  # None: the epoch lacks the key
        r["last_epoch"] = {k: v for k, v in history[-1].items() if k in LAST_EPOCH_ONLY} if history else {}
        shown = r.pop("test_images", None)
        if shown:
            listed = [[i["image"], i["label"], i["defect"]] for i in shown]
            if images.setdefault(r["category"], listed) == listed:
                r["test_scores"] = [float(str(numpy.float32(i["score"]))) for i in shown]
            else:  # another test split than the category's first run: its own list
                r["test_images"] = shown
        kept.append(r)
    return {"about": "bench/detector.py summary of the quality-*.json runs; read with bench/detector.py table / curves",
            "images": images, "runs": kept}


def short(value):
    """A float to six significant digits; anything else as it is."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def expand_summary(summary: dict) -> list[dict]:
    """``compact_summary``'s runs in the form of a run's own JSON (what ``table`` and ``curves`` read)."""
    runs = []
    for r in summary["runs"]:
        r = dict(r)
        columns, last = r.pop("history"), r.pop("last_epoch")
        n = len(columns.get("epoch", []))
        r["history"] = [{k: v[i] for k, v in columns.items() if v[i] is not None} for i in range(n)]
        if n:
            r["history"][-1].update(last)
        scores = r.pop("test_scores", None)
        if scores is not None:  # the float32 each score was, exactly
            r["test_images"] = [{"image": i, "label": lab, "defect": d, "score": float(numpy.float32(v))}
                                for (i, lab, d), v in zip(summary["images"][r["category"]], scores)]
        runs.append(r)
    return runs


def write_summary(args) -> None:
    out = Path(args.out)
    summary = compact_summary(load_runs(out))
    lines = [f'{{"about": {json.dumps(summary["about"])},', f'"images": {json.dumps(summary["images"])},', '"runs": [']
    lines.append(",\n".join(json.dumps(r) for r in summary["runs"]))  # one run a line: readable diffs
    (out / SUMMARY).write_text("\n".join(lines) + "\n]}\n")
    print(f"wrote {out / SUMMARY}: {len(summary['runs'])} runs, {(out / SUMMARY).stat().st_size / 1024:.0f} KiB")


def run_name(r: dict) -> str:
    """A quality run's variant, with its seed when not 0."""
    return r["variant"] + (f" seed {r['seed']}" if r.get("seed") else "")


def print_tables(args) -> None:
    rows = load_runs(Path(args.out))
    if rows:
        print("| category | variant | epochs | image AUROC | pixel AUROC | AUPRO | image F1-max | s/epoch "
              "| last val_score | scoring (pixel map; image score) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            t, h = r["test"], r["history"]
            sec = statistics.median(e["train_s"] for e in h)
            sc = r.get("scoring") or r["config"]["scoring"]
            image_map = sc.get("image_map", "pixel")  # runs from before image_map existed scored the pixel map
            chosen = f"{sc['map']} map; image {sc['image_score']} of {sc['map'] if image_map == 'pixel' else image_map}"
            print(f"| {r['category']} | {run_name(r)} | {len(h)} | {t['image_auroc']:.3f} | {t['pixel_auroc']:.3f} | "
                  f"{t['aupro']:.3f} | {t['image_f1_max']:.3f} | {sec:.0f} | {h[-1]['val_score']:.3f} | {chosen} |")
        print_seed_tables(rows)


METRICS = ("image_auroc", "pixel_auroc", "aupro")


def print_curves(args) -> None:
    """Validation after every epoch of every quality run (what a sweep sees; no test figure), with the share of
    masked positions still pushed and the w used: when does the synthetic term help, when does it stop."""
    for category in args.categories.split(","):
        rows = load_runs(Path(args.out), category)
        for key, label in (("val_pixel_auroc", "validation pixel AUROC"), ("val_score", "val_score"),
                           ("active", "share of masked positions still pushed"), ("weight", "w used")):
            shown = [r for r in rows if all(key in e for e in r["history"])]
            if not shown:
                continue
            epochs = max(len(r["history"]) for r in shown)
            print(f"\n{category}: {label} per epoch")
            print("| run | " + " | ".join(str(e + 1) for e in range(epochs)) + " |")
            print("|---|" + "---|" * epochs)
            for r in shown:
                print(f"| {run_name(r)} | " + " | ".join(f"{e[key]:.3f}" for e in r["history"]) + " |")


def print_seed_tables(rows: list[dict]) -> None:
    """Variants run at several seeds: mean and range per metric, then each variant against w = 0 seed by
    seed (the same seed drives both runs' initialisation and batches, so the per-seed difference is paired)."""
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        runs.setdefault((r["category"], r["variant"]), {})[r.get("seed", 0)] = r["test"]
    several = {k: v for k, v in sorted(runs.items()) if len(v) > 1}
    if not several:
        return
    print("\n| category | variant | seeds | " + " | ".join(f"{m} mean [min, max]" for m in METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for (category, variant), by_seed in several.items():
        cells = []
        for m in METRICS:
            vals = [t[m] for t in by_seed.values()]
            cells.append(f"{statistics.mean(vals):.3f} [{min(vals):.3f}, {max(vals):.3f}]")
        print(f"| {category} | {variant} | {','.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) + " |")
    print("\n| category | variant − w0, paired by seed | seeds | " + " | ".join(f"{m}: mean (each seed)" for m in METRICS)
          + " | seeds ahead on all three |")
    print("|---|---|---|" + "---|" * len(METRICS) + "---|")
    for (category, variant), by_seed in several.items():
        base = runs.get((category, "w0"), {})
        seeds = sorted(set(by_seed) & set(base))
        if variant == "w0" or len(seeds) < 2:
            continue
        cells = []
        for m in METRICS:
            diffs = [by_seed[s][m] - base[s][m] for s in seeds]
            cells.append(f"{statistics.mean(diffs):+.3f} ({', '.join(f'{d:+.3f}' for d in diffs)})")
        ahead = sum(all(by_seed[s][m] > base[s][m] for m in METRICS) for s in seeds)
        print(f"| {category} | {variant} | {','.join(map(str, seeds))} | " + " | ".join(cells) + f" | {ahead}/{len(seeds)} |")
    print_image_bootstrap(rows)


def print_image_bootstrap(rows: list[dict]) -> None:
    """Is a paired image-AUROC difference larger than which test images were collected? For each variant
    against w = 0 at the same seed, a stratified paired bootstrap over the test images (10,000 rounds):
    the difference, its 95 % interval and the share of rounds the variant is ahead. Runs scored before
    the JSON kept per-image scores are left out (``rescore`` adds them)."""
    scored = {(r["category"], r["variant"], r.get("seed", 0)): r["test_images"] for r in rows if r.get("test_images")}
    pairs = [(k, v) for k, v in sorted(scored.items()) if k[1] != "w0" and (k[0], "w0", k[2]) in scored]
    if not pairs:
        return
    print("\n| category | variant − w0 (image AUROC) | seed | difference | 95 % interval over test images "
          "| rounds ahead |")
    print("|---|---|---|---|---|---|")
    paired: dict[tuple[str, str], dict[int, tuple]] = {}
    for (category, variant, seed), images in pairs:
        base = {i["image"]: i["score"] for i in scored[(category, "w0", seed)]}
        if set(base) != {i["image"] for i in images}:
            print(f"| {category} | {variant} | {seed} | (not the same test images as w0) | | |")
            continue
        images = sorted(images, key=itemgetter("image"))
        run = ([i["label"] for i in images], [i["score"] for i in images], [base[i["image"]] for i in images])
        paired.setdefault((category, variant), {})[seed] = run
        print_difference(category, variant, str(seed), paired_auroc_difference(*run))
    for (category, variant), runs in paired.items():
        if len(runs) > 1:  # every seed's pair on the same resampled images: the mean difference
            seeds = sorted(runs)
            out = paired_auroc_difference(runs[seeds[0]][0], [runs[s][1] for s in seeds], [runs[s][2] for s in seeds])
            print_difference(category, variant, f"mean of {','.join(map(str, seeds))}", out)


def print_difference(category: str, variant: str, seeds: str, out: dict) -> None:
    print(f"| {category} | {variant} | {seeds} | {out['diff']:+.3f} | [{out['low']:+.3f}, {out['high']:+.3f}] "
          f"| {out['a_ahead']:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["quality", "rescore", "table", "curves", "summary"])
    parser.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--categories", default="tire,magnetic_tile")
    parser.add_argument("--category", default="tire")
    parser.add_argument("--variants", default="default,w0")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="quality: train.seed (runs named ...-seedN when not 0)")
    parser.add_argument("--seeds", default="", help="rescore: the seeds whose runs to re-score, e.g. 0,1,2,3")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    {"quality": run_quality, "rescore": run_rescore, "table": print_tables, "curves": print_curves,
     "summary": write_summary}[args.command](args)


if __name__ == "__main__":
    main()
