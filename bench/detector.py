"""Detector benchmark on the real categories: quality of the default vs its w = 0 ablation, and speed.

    .venv/bin/python bench/detector.py quality [--categories tire,magnetic_tile] [--epochs 20]
    .venv/bin/python bench/detector.py speed   [--category tire]
    .venv/bin/python bench/detector.py rescore [--categories ...] [--variants ...] [--seeds 0,1]  # after a scoring change
    .venv/bin/python bench/detector.py table   # print the tables of everything measured so far
    .venv/bin/python bench/detector.py curves [--categories tire]  # validation per epoch of every run

Quality: pretrained mobilenetv2_100 at 256x256, a fixed epoch budget, the *last* epoch's model, test
metrics computed once at the end (nothing is selected on test). One JSON per run in --out, so an
interrupted benchmark resumes where it stopped (delete a JSON to rerun it).

Speed: seconds per epoch with the feature cache, without it (backbone on every normal batch) and with
a synthetic pool; inference ms/image at batch 1 and 32; peak resident memory. Each measurement runs in
its own process so that peak memory is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from operator import itemgetter
from pathlib import Path

import torch

from ssnf.checkpoint import load_checkpoint
from ssnf.config import ScoringConfig, SSNFConfig, to_dict
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.evaluate import evaluate
from ssnf.features import load_images, to_tensor
from ssnf.metrics import paired_auroc_difference
from ssnf.scoring import image_map_kind, resolve, score
from ssnf.training import prepare_data, train, validate, with_overrides

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "default": {},  # the paper's architecture and loss, ssnf's defaults (since the anchor: loss.anchor=unchanged)
    "w0": {"loss": {"weight": 0.0}},  # the same, plain NLL (FastFlow-style training)
    "w0.05": {"loss": {"weight": 0.05, "anchor": "none"}},  # the default's synthetic term at a quarter of its weight
    "pool": {"synthesis": {"pool_size": 512}, "loss": {"anchor": "none"}},  # a pool of 512 made once (no anchor)
    "paper_loss": {"loss": {"weight": 1.0, "form": "constrained", "cap": 1.0, "anchor": "none"}},  # the paper's image-level rule
    # the mask form without / with the novelty gate, spelled out so that they do not move with the defaults
    "ungated": {"loss": {"weight": 0.2, "form": "mask", "margin": 1.0, "gate": "none", "anchor": "none"}},
    "gated_w0.2": {"loss": {"weight": 0.2, "form": "mask", "margin": 1.0, "gate": "novel", "gate_quantile": 0.9,
                           "anchor": "none"}},
    "gated_w1": {"loss": {"weight": 1.0, "form": "mask", "margin": 1.0, "gate": "novel", "gate_quantile": 0.9,
                         "anchor": "none"}},
    # the gated default with w falling linearly to 0 over training (loss.schedule=linear)
    "gated_linear": {"loss": {"weight": 0.2, "form": "mask", "margin": 1.0, "gate": "novel", "gate_quantile": 0.9,
                              "schedule": "linear", "anchor": "none"}},
    # the default with its patches placed on the object (synthesis.foreground=object finds a dark tyre)
    "object": {"synthesis": {"object_aware": True, "foreground": "object"}, "loss": {"anchor": "none"}},
    # the default with patches about half as wide (half-width 0.01 + Gamma(2, 0.025), clipped to [0.02, 0.1]
    # of the side, against 0.03 + Gamma(2, 0.05) in [0.05, 0.2]): harder anomalies that keep the push active
    "small_patches": {"synthesis": {"gamma_offset": 0.01, "gamma_scale": 0.025, "width_min": 0.02,
                                    "width_max": 0.1}, "loss": {"anchor": "none"}},
    # the default with patches pasted as they are (synthesis.blend=paste): sharp seams instead of Poisson's
    # smooth ones, a local break in the texture (CutPaste's blend) rather than displaced but continuous content
    "paste": {"synthesis": {"blend": "paste"}, "loss": {"anchor": "none"}},
    # the previous default: gated mask loss, nothing holding the rest of a synthetic image (loss.anchor=none);
    # the variants below and above that were run before the anchor spell out anchor=none as well
    "gated": {"loss": {"anchor": "none"}},
    # the default since the anchor (loss.anchor=unchanged), spelled out
    "anchor": {"loss": {"anchor": "unchanged"}},
    # the default with Gaussian noise of 0.2 channel standard deviations on the flows' training inputs
    "noise0.2": {"train": {"feature_noise": 0.2}},
}


def base_config(data_root: str, category: str, epochs: int, **sections) -> SSNFConfig:
    cfg = with_overrides(SSNFConfig(), data={"root": data_root, "category": category, "image_size": 256},
                         backbone={"name": "mobilenetv2_100"}, train={"epochs": epochs})
    return with_overrides(cfg, **sections) if sections else cfg


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
            cfg = base_config(args.data_root, category, args.epochs, **VARIANTS[variant])
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
    val = validate(model, data.validation, cfg, "cpu")
    history = ckpt.history
    if history:  # the last epoch's validation as it is now; what training saw is kept beside it
        before = {k: history[-1].get(k) for k in ("val_image_auroc", "val_pixel_auroc", "val_score", "val_map",
                                                  "val_image_map", "val_image_score")}
        history[-1] = {**history[-1], "val_at_training": history[-1].get("val_at_training", before), **val}
    path = out / f"quality-{name}.json"
    kept = {k: v for k, v in json.loads(path.read_text()).items() if k in ("timings",)} if path.is_file() else {}
    test_and_write(path, category, variant, cfg, model, data.splits.test, history,
                   rescored_from=str(ckpt_path.relative_to(out)), **kept)


def measure_one(args) -> None:
    """One speed measurement in this process; prints one JSON line."""
    mode = args.mode
    if mode == "inference":
        cfg = base_config(args.data_root, args.category, 1)
        result = train(with_overrides(cfg, loss={"weight": 0.0}), progress=False)
        model = result.model.eval()
        scoring = resolve(cfg.scoring, model.scoring)  # what deployment runs: maps and scores, not only flows
        images = load_images(result.splits.test[:32], 256)
        timings = {"scoring": to_dict(scoring)}
        with torch.no_grad():
            for batch in (1, 32):
                x = to_tensor(images[:batch])
                score(model(x), scoring, (256, 256))  # warm-up
                runs = []
                for _ in range(5 if batch == 32 else 20):
                    t = time.perf_counter()
                    score(model(x), scoring, (256, 256))
                    runs.append((time.perf_counter() - t) / batch * 1000)
                timings[f"ms_per_image_batch{batch}"] = statistics.median(runs)
        print(json.dumps({"mode": mode, **timings, "peak_rss_mb": peak_rss_mb()}))
        return
    sections = {"default": {}, "no_cache": {"train": {"feature_cache": False}},
                "pool": {"synthesis": {"pool_size": 256}, "loss": {"anchor": "none"}}}[mode]
    cfg = base_config(args.data_root, args.category, 2, **sections)
    result = train(cfg, progress=False)
    print(json.dumps({"mode": mode, "epoch_s": result.history[-1]["train_s"], "history": result.history,
                      "timings": result.timings, "peak_rss_mb": peak_rss_mb()}))


def run_speed(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode in ("default", "no_cache", "pool", "inference"):
        path = out / f"speed-{args.category}-{mode}.json"
        if path.is_file():
            print(f"{path.name}: done already")
            continue
        proc = subprocess.run([sys.executable, __file__, "one", "--mode", mode, "--category", args.category,
                               "--data-root", args.data_root], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"speed {mode} failed:\n{proc.stderr[-3000:]}")
        path.write_text(proc.stdout.strip().splitlines()[-1])
        print(path.read_text())


def run_name(r: dict) -> str:
    """A quality run's variant, with its seed when not 0."""
    return r["variant"] + (f" seed {r['seed']}" if r.get("seed") else "")


def print_tables(args) -> None:
    out = Path(args.out)
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("quality-*.json"))]
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
    speed = {p.stem.split("-")[-1]: json.loads(p.read_text()) for p in sorted(out.glob("speed-*.json"))}
    if speed:
        print("\n| measurement | value | peak RSS (MB) |")
        print("|---|---|---|")
        for mode in ("default", "no_cache", "pool"):
            if mode in speed:
                print(f"| seconds per epoch, {mode.replace('_', ' ')} | {speed[mode]['epoch_s']:.1f} | "
                      f"{speed[mode]['peak_rss_mb']:.0f} |")
        if "inference" in speed:
            s = speed["inference"]
            print(f"| inference ms/image, batch 1 | {s['ms_per_image_batch1']:.1f} | {s['peak_rss_mb']:.0f} |")
            print(f"| inference ms/image, batch 32 | {s['ms_per_image_batch32']:.1f} | |")


METRICS = ("image_auroc", "pixel_auroc", "aupro")


def print_curves(args) -> None:
    """Validation after every epoch of every quality run (what a sweep sees; no test figure), with the share of
    masked positions still pushed and the w used: when does the synthetic term help, when does it stop."""
    out = Path(args.out)
    for category in args.categories.split(","):
        rows = [json.loads(p.read_text()) for p in sorted(out.glob(f"quality-{category}-*.json"))]
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
    parser.add_argument("command", choices=["quality", "rescore", "speed", "table", "curves", "one"])
    parser.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--categories", default="tire,magnetic_tile")
    parser.add_argument("--category", default="tire")
    parser.add_argument("--variants", default="default,w0")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="quality: train.seed (runs named ...-seedN when not 0)")
    parser.add_argument("--seeds", default="", help="rescore: the seeds whose runs to re-score, e.g. 0,1,2,3")
    parser.add_argument("--mode", default="default")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    {"quality": run_quality, "rescore": run_rescore, "speed": run_speed, "table": print_tables, "curves": print_curves,
     "one": measure_one}[args.command](args)


if __name__ == "__main__":
    main()
