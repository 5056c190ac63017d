"""The stages of ``bench/gpu.py``, each run in a process of its own: ``python bench/gpu_stages.py SPEC RESULT``.

A spec (JSON) names the stage and what it runs on (``device``: ``cuda``, or ``cpu`` in a dry run; the data root and
category; the sizes); the stage writes its figures to RESULT (JSON). In a process of its own a stage's peak GPU
memory is its own, a crash or a hang ends it alone, and the driver can stop it at its share of the time budget.

- ``env``: the card, torch / CUDA / cuDNN versions, the packages the run needs, ONNX Runtime's providers;
- ``tests``: ``pytest tests/test_cuda.py`` (counted from its JUnit XML);
- ``train``: the default detector (``ssnf train``'s config: the library defaults), ``epochs`` epochs in one
  precision: seconds per epoch (training; validation without the final calibration, which is timed apart), the
  loop's own timers, validation figures, peak GPU memory; the checkpoint for ``predict``;
- ``sweep``: ``tune_main.py`` on local Ray, one ``--gpus-per-trial`` setting (``bench/gpu_sweep.py``);
- ``predict``: ms/image at batch 1 and 32 through ``Detector.run`` (the ``ssnf predict`` path after decoding) for
  eager bf16, eager fp32, TorchScript and ONNX Runtime, then ``ssnf predict`` end to end.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
PACKAGES = ("torch", "timm", "numpy", "scipy", "pandas", "pyarrow", "pillow", "opencv-python-headless", "onnx",
            "onnxscript", "onnxruntime", "onnxruntime-gpu", "ray", "optuna", "FrEIA", "pytest")


def stage_env(spec: dict) -> dict:
    """What the run runs on; ``cuda``: whether torch sees a CUDA device."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpus": os.cpu_count(), "cuda": torch.cuda.is_available(), "packages": {}}
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gib=round(props.total_memory / 2**30, 2), multiprocessors=props.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported(), devices=torch.cuda.device_count())
        info["nvidia_smi"] = _nvidia_smi()
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError as exc:
        info["onnxruntime_providers"] = f"not importable: {exc}"
    info["imports"] = {name: _importable(name) for name in ("ray", "ray.tune", "optuna", "FrEIA.modules")}
    info["unmet_requirements"] = unmet_requirements({"ray": {"tune"}, "optuna": set(), "FrEIA": set()})
    return info


def _nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not available: {exc}"


def _importable(name: str) -> str:
    import importlib

    try:
        module = importlib.import_module(name)
        return f"ok ({Path(module.__file__).parent})"
    except Exception as exc:  # noqa: BLE001 - recorded, the stage goes on
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def unmet_requirements(dists: dict[str, set[str]]) -> list[str]:
    """The requirements of ``dists`` (name -> extras) that the installed packages do not meet (carried wheels are
    installed with ``--no-deps``: this is the check pip did not make)."""
    from packaging.requirements import Requirement

    unmet = []
    for dist, extras in dists.items():
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            unmet.append(f"{dist}: not installed")
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                unmet.append(f"{dist} needs {req}: missing")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{dist} needs {req}: {have} installed")
    return unmet


def stage_tests(spec: dict) -> dict:
    """``pytest tests/test_cuda.py``: counts and the failures' first lines, from its JUnit XML."""
    xml = Path(spec["work"]) / "tests.xml"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py",
                           f"--junitxml={xml}"], cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
    if not xml.is_file():
        raise RuntimeError(f"pytest exited {proc.returncode} without a report: {proc.stderr.strip()[-300:]}")
    suite = ET.parse(xml).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    cases = {}
    for case in suite.iter("testcase"):
        outcome = next(((child.tag, (child.get("message") or "").splitlines()[0][:300] if child.get("message") else "")
                        for child in case if child.tag in ("failure", "error", "skipped")), ("passed", ""))
        cases[case.get("name")] = {"outcome": outcome[0], "message": outcome[1], "seconds": float(case.get("time", 0))}
    counts = {k: sum(c["outcome"] == k for c in cases.values()) for k in ("passed", "failure", "error", "skipped")}
    return {"returncode": proc.returncode, "counts": counts, "cases": cases,
            "pytest_s": round(time.perf_counter() - started, 2)}


def stage_train(spec: dict) -> dict:
    """The default detector for ``spec["epochs"]`` epochs in ``spec["precision"]``; checkpoint to ``spec["out"]``."""
    import torch

    import ssnf.inference
    from ssnf.configfile import load_config
    from ssnf.devices import cuda_memory
    from ssnf.training import train

    cfg = load_config(None, [f"train.epochs={spec['epochs']}", f"train.precision={spec['precision']}",
                             f"train.device={spec['device']}", *spec.get("sets", [])], spec["data_root"],
                      spec["category"])
    calibrations: list[float] = []
    real = ssnf.inference.Detector.calibrate

    def timed_calibrate(self, *args, **kwargs):  # the final thresholds: timed apart from the epoch's validation
        t = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            calibrations.append(time.perf_counter() - t)

    ssnf.inference.Detector.calibrate = timed_calibrate
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(cfg, out_dir=Path(spec["out"]), progress=False)
    total = time.perf_counter() - started
    final = len(result.history) - 1  # the final calibration ran after the last epoch's validation
    epochs = [_epoch(h, sum(calibrations) if i == final else 0.0) for i, h in enumerate(result.history)]
    last = epochs[-1]
    n_train = len(result.splits.train)
    return {"precision": spec["precision"], "device": str(next(result.model.parameters()).device),
            "images": {"train": n_train, "validation_normals": len(result.splits.val)},
            "batch_size": cfg.train.batch_size, "steps_per_epoch": max(1, n_train // min(cfg.train.batch_size, n_train)),
            "image_size": cfg.data.image_size, "setup_s": result.history[0].get("setup_s"), "epochs": epochs,
            "epoch_s": last["train_s"] + last["val_s"], "train_s": last["train_s"], "val_s": last["val_s"],
            "calibrate_s": last["calibrate_s"], "flows_s": last["flows_s"], "val_score": last["val_score"],
            "val_image_auroc": last["val_image_auroc"], "val_pixel_auroc": last["val_pixel_auroc"],
            "total_s": total, "checkpoint": str(Path(spec["out"]) / "checkpoint.pt"),
            **cuda_memory(next(result.model.parameters()).device)}


def _epoch(report: dict, calibrate_s: float) -> dict:
    """One epoch's figures; ``val_s`` without the final calibration (``calibrate_s``), ``flows_s`` what the loop's
    timers leave to the flows' forward and backward and the optimizer."""
    parts = sum(report.get(k, 0.0) for k in ("backbone_s", "synthesis_s", "gate_s", "augment_s"))
    keep = ("epoch", "train_s", "backbone_s", "synthesis_s", "gate_s", "augment_s", "loss", "val_score",
            "val_image_auroc", "val_pixel_auroc", "val_score_clean")
    return {**{k: report.get(k) for k in keep}, "val_s": report.get("val_s", 0.0) - calibrate_s,
            "calibrate_s": calibrate_s, "flows_s": report["train_s"] - parts}


def stage_sweep(spec: dict) -> dict:
    from gpu_sweep import run_sweep

    return run_sweep(spec)


def stage_predict(spec: dict) -> dict:
    from gpu_predict import run_predict

    return run_predict(spec)


STAGES = {"env": stage_env, "tests": stage_tests, "train": stage_train, "sweep": stage_sweep,
          "predict": stage_predict}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = STAGES[spec["stage"]](spec)
    Path(argv[1]).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
