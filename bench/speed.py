"""Training and inference speed of the default detector, beside a reference commit, in one run.

    .venv/bin/python bench/speed.py run [--category tire] [--ref REV] [--variants fp32,bf16] [--epochs 2]
    .venv/bin/python bench/speed.py table                      # print what the last run stored

``run`` measures, each in its own process, one after another so that the machine's noise is shared:
seconds per training epoch (the last of ``--epochs``, whose first pays the warm-up) and per validation,
inference ms/image at batch 1 and 32 (backbone + flows + the chosen scoring, images already decoded), and
a torch-profiler breakdown of the training loop's steps by part, with the FLOPs of a step and of an image's
forward against what the CPU sustains on a large matrix product. ``--ref`` runs the same measurements with
the code of another commit (a git worktree under the system temp folder) for "the current code path";
only what that commit offered is used there. A variant is a config file under ``bench/configs``
(``bf16`` -> ``bench/configs/bf16.yaml``; ``fp32``: the defaults). Results: ``bench/results/speed-<category>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------- children (one measurement per process)

# what the default chose on validation on tire (docs/benchmarks.md): inference is timed with it
CHOSEN_SCORING = ["scoring.map=nll", "scoring.image_map=fastflow", "scoring.image_score=topk"]


def _config(args, *extra: str):
    from ssnf.configfile import load_config

    path = HERE / "configs" / f"{args.variant}.yaml"
    sets = [f"data.image_size={args.size}", f"train.epochs={args.epochs}", *extra, *args.set]
    return load_config(str(path) if path.is_file() else None, sets, str(args.data_root), args.category)


def child_epoch(args) -> dict:
    from ssnf.training import train

    result = train(_config(args), progress=False)
    last = result.history[-1]
    return {"train_s": last["train_s"], "val_s": last.get("val_s"), "backbone_s": last["backbone_s"],
            "synthesis_s": last["synthesis_s"], "gate_s": last["gate_s"], "setup_s": result.history[0]["setup_s"],
            "epochs": [h["train_s"] for h in result.history], "val_score": last.get("val_score")}


def child_infer(args) -> dict:
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.features import load_images

    cfg = _config(args, *CHOSEN_SCORING)
    images = load_images(make_splits(load_index(cfg.data), cfg.data).test[:32], cfg.data.image_size)
    try:
        from ssnf.inference import Detector
    except ImportError:  # the reference commit: its model and scoring, called the way its evaluate() did
        return _infer_reference(cfg, images)
    detector = Detector.build(cfg)
    out = {}
    for batch in (1, 32):
        detector.predict(images[:batch])  # warm-up
        times = []
        for _ in range(5 if batch == 1 else 2):
            t = time.perf_counter()
            for start in range(0, 32 if batch == 1 else batch, batch):
                detector.predict(images[start:start + batch])
            times.append((time.perf_counter() - t) / (32 if batch == 1 else batch))
        out[f"batch{batch}_ms"] = 1000 * min(times)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def _infer_reference(cfg, images) -> dict:
    import torch

    from ssnf.features import to_tensor
    from ssnf.model.detector import SSNFModel
    from ssnf.scoring import score

    model = SSNFModel.build(cfg.backbone, cfg.model, cfg.train.seed).eval()
    scoring = cfg.scoring
    size = (cfg.data.image_size,) * 2
    out = {}
    with torch.no_grad():
        for batch in (1, 32):
            score(model(to_tensor(images[:batch])), scoring, size)
            times = []
            for _ in range(5 if batch == 1 else 2):
                t = time.perf_counter()
                for start in range(0, 32 if batch == 1 else batch, batch):
                    score(model(to_tensor(images[start:start + batch])), scoring, size)
                times.append((time.perf_counter() - t) / (32 if batch == 1 else batch))
            out[f"batch{batch}_ms"] = 1000 * min(times)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


ATTENTION = ("scaled_dot_product", "softmax", "bmm", "baddbmm", "masked_fill", "_efficient_attention")
CONVOLUTION = ("convolution", "conv2d", "mkldnn_conv")
PARTS = ("backbone", "synthesis", "gate+anchor", "optimizer", "attention", "convolution", "other")


def _labelled(module, name: str, label: str) -> None:
    """Wrap ``module.name`` (where it exists) in a profiler scope called ``label``."""
    from torch.profiler import record_function

    real = getattr(module, name, None)
    if real is None:
        return

    def scoped(*args, **kwargs):
        with record_function(label):
            return real(*args, **kwargs)

    setattr(module, name, scoped)


def child_profile(args) -> dict:
    """The real training loop (``train``) on the first 64 training images for one epoch, under the torch
    profiler: the share of a step of each part. The parts are scopes put around the library's own functions
    (backbone, synthesis, the gate's and the anchor's position masks, the optimizer; set-up and validation
    are left out) and, for the rest (the flows forward and backward, the loss), operator names: attention,
    convolutions, other. The same wrapping works on the reference commit's code. Self CPU time."""
    import importlib
    import importlib.util

    import torch
    from torch.profiler import ProfilerActivity, profile

    from ssnf import training
    from ssnf.backbones.extractor import FeatureExtractor

    cfg = _config(args, "train.epochs=1", "data.few_shot=72")
    forward = FeatureExtractor.forward
    _labelled(FeatureExtractor, "forward", "backbone")
    _labelled(torch.optim.Adam, "step", "optimizer")
    _labelled(training, "validate", "validation")
    for name in ("prepare", "prepare_data"):  # checks, model, features of the training images: not a step
        _labelled(training, name, "setup")
    for where in ("ssnf.synthesis.patches", "ssnf.training"):
        _labelled(importlib.import_module(where), "synthesize", "synthesis")
    for where in ("ssnf.synthesis.positions", "ssnf.loss"):
        if importlib.util.find_spec(where) is not None:
            module = importlib.import_module(where)
            for name in ("novel_positions", "unchanged_positions"):
                _labelled(module, name, "gate+anchor")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = training.train(cfg, progress=False)
    FeatureExtractor.forward = forward
    steps = max(1, (len(result.splits.train) // cfg.train.batch_size))
    parts = dict.fromkeys(PARTS, 0.0)
    scopes = set(PARTS) | {"validation", "setup"}
    for event in prof.events():
        scope, parent = None, event.cpu_parent
        while parent is not None and scope is None:
            scope = parent.name if parent.name in scopes else None
            parent = parent.cpu_parent
        if event.name in scopes:
            scope = event.name
        if scope in ("validation", "setup") or event.name.startswith("ProfilerStep"):
            continue
        if scope is None:
            name = event.name.lower()
            scope = ("attention" if any(a in name for a in ATTENTION) else
                     "convolution" if any(c in name for c in CONVOLUTION) else "other")
        parts[scope] += event.self_cpu_time_total / 1e6
    total = sum(parts.values())
    step = _flow_step(cfg)
    return {"steps": steps, "profiled_s_per_step": total / steps, "epoch_train_s": result.history[-1]["train_s"],
            **{f"{k}_share": v / total for k, v in parts.items()}, **step,
            "peak_gflops_per_s": _peak_gflops(getattr(cfg.train, "precision", "fp32"))}


def _flow_step(cfg) -> dict:
    """FLOPs of the flows' forward and backward on a full step (16 normal + 16 synthetic feature maps) and of
    a forward per image, backbone included: the work the CPU's sustained rate bounds."""
    import torch

    from ssnf.backbones.extractor import build_extractor
    from ssnf.config import BackboneConfig
    from ssnf.loss import image_nll
    from ssnf.model.detector import SSNFModel

    extractor = build_extractor(BackboneConfig(name=cfg.backbone.name, strides=cfg.backbone.strides,
                                               pretrained=False))
    model = SSNFModel(extractor, cfg.model, 0)
    size = cfg.data.image_size
    feats = [torch.randn(2 * cfg.train.batch_size, c, size // s, size // s)
             for c, s in zip(extractor.channels, extractor.strides)]

    def step():
        image_nll(model.flow_features(feats)).mean().backward()

    with torch.no_grad():
        forward = _flops(lambda: model(torch.rand(1, 3, size, size)))
    return {"step_gflop": _flops(step) / 1e9, "forward_gflop_per_image": forward / 1e9}


def _flops(fn) -> float:
    """Floating-point operations of ``fn()`` as torch counts them (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _peak_gflops(precision: str) -> float:
    """What this machine's torch sustains on a large matrix product (all threads), in the given precision:
    the ceiling the model's FLOPs are compared with."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e9


CHILDREN = {"epoch": child_epoch, "infer": child_infer, "profile": child_profile}


# ---------------------------------------------------------------- the run

def worktree(rev: str) -> Path:
    sha = subprocess.run(["git", "rev-parse", rev], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"ssnf-ref-{sha[:10]}"
    if not (path / "ssnf").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha], cwd=REPO, check=True,
                       capture_output=True)
    return path


def measure(kind: str, variant: str, args, code: Path | None) -> dict:
    # this checkout's library (or the reference commit's) ahead of the installed one
    env = {**os.environ, "PYTHONPATH": str(code or REPO)}
    cmd = [sys.executable, __file__, "child", kind, "--variant", variant, "--category", args.category,
           "--data-root", str(args.data_root), "--epochs", str(args.epochs), "--size", str(args.size)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> None:
    ref = worktree(args.ref) if args.ref else None
    runs = ([("ref", "default", ref)] if ref else []) + [(v, v, None) for v in args.variants.split(",")]
    out = HERE / "results" / f"speed-{args.category}.json"
    stored = {"category": args.category, "size": args.size, "epochs": args.epochs, "ref": args.ref,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip(), "results": {}}
    for kind in args.kinds.split(","):
        for name, variant, code in runs:
            t = time.perf_counter()
            stored["results"].setdefault(name, {})[kind] = measure(kind, variant, args, code)
            print(f"{kind} {name}: {json.dumps(stored['results'][name][kind])[:300]} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    out.write_text(json.dumps(stored, indent=2))
    table(out)


def table(path: Path) -> None:
    stored = json.loads(path.read_text())
    results = stored["results"]
    base = results.get("ref", {})
    print(f"\n{stored['category']} {stored['size']} px, ref {stored['ref']}, commit {stored['commit']}")
    print("| run | s/epoch (train) | validation s | backbone / synthesis / gate s | batch 1 ms/img | batch 32 ms/img |"
          " step (profiled) s | " + " / ".join(PARTS) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        e, i, p = r.get("epoch", {}), r.get("infer", {}), r.get("profile", {})
        ratio = (f" ({base['epoch']['train_s'] / e['train_s']:.2f}x)" if "epoch" in base and e else "")
        cells = [f"{e.get('train_s', float('nan')):.1f}{ratio}", f"{e.get('val_s') or float('nan'):.1f}",
                 f"{e.get('backbone_s', 0):.1f} / {e.get('synthesis_s', 0):.1f} / {e.get('gate_s', 0):.1f}",
                 f"{i.get('batch1_ms', float('nan')):.1f}", f"{i.get('batch32_ms', float('nan')):.1f}",
                 f"{p.get('profiled_s_per_step', float('nan')):.2f}",
                 " / ".join(f"{100 * p.get(k + '_share', float('nan')):.0f} %" for k in PARTS)]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "child"):
        p = sub.add_parser(name)
        if name == "child":
            p.add_argument("kind", choices=sorted(CHILDREN))
            p.add_argument("--variant", default="fp32")
            p.add_argument("--set", action="append", default=[])
        else:
            p.add_argument("--ref", default="", help="a git revision to measure beside this checkout")
            p.add_argument("--variants", default="fp32,bf16")
            p.add_argument("--kinds", default="profile,infer,epoch")
        p.add_argument("--category", default="tire")
        p.add_argument("--data-root", type=Path, default=DATA)
        p.add_argument("--epochs", type=int, default=2)
        p.add_argument("--size", type=int, default=256)
    p = sub.add_parser("table")
    p.add_argument("--category", default="tire")
    args = parser.parse_args()
    if args.command == "table":
        table(HERE / "results" / f"speed-{args.category}.json")
    elif args.command == "run":
        if not (args.data_root / args.category).is_dir():
            raise SystemExit(f"no {args.category} under {args.data_root}: this benchmark needs the real data")
        run(args)
    else:
        print(json.dumps(CHILDREN[args.kind](args), default=float))


if __name__ == "__main__":
    main()
