"""The predict stage of ``bench/gpu.py``: inference speed per backend on one device, and ``ssnf predict`` end to end.

The model is the train stage's bf16-trained checkpoint (its thresholds, its chosen scoring); without one, the
default detector untrained with the scoring the default chose on tire (speed does not depend on the weights). Timed through
``Detector.run`` on images already at the model's size (what ``ssnf predict`` runs after decoding: the host ->
device copy, resize-to-identity, normalisation, backbone, flows, map, score, the copy back), ms/image at batch 1
(32 images one at a time; 8 in a dry run) and batch 32, the median of ``repeats`` passes after a warm-up pass at each batch size
(which also lets cuDNN's autotuner choose); peak GPU memory per backend. Backends:

- ``eager_fp32`` / ``eager_bf16``: the PyTorch model in that arithmetic (``ssnf predict --precision``; its default,
  ``backends.DEPLOY_PRECISION``, is float32 whatever the model was trained in: ``default_backend`` in the result);
- ``torchscript``: the float32 ``InferencePath`` (what ``ssnf export`` writes) traced with ``torch.jit.trace`` on
  the device with inputs there (an exported TorchScript file is traced on the CPU and refuses a GPU:
  ``ssnf.backends.pick_device``);
- ``onnx``: ``ssnf export --format onnx``, run by ONNX Runtime on the device: on a GPU only with its CUDA provider
  (onnxruntime-gpu); without one the JSON says so.

Each backend's largest score difference from eager fp32 is recorded beside its speed.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ssnf.backends import DEPLOY_PRECISION
from ssnf.devices import cuda_memory, synchronize, to_device
from ssnf.inference import Detector

BATCHES = (1, 32)


class TracedBackend:
    """``ssnf.backends``' contract over ``detector``'s float32 inference path traced on ``device``."""

    name = "torchscript"
    precision = "fp32"
    model = None

    def __init__(self, detector: Detector, device: torch.device, example: np.ndarray) -> None:
        from ssnf.export import float32_path

        self.device, self.scoring = device, detector.scoring
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes read as constants (as in ssnf.export)
            path = float32_path(detector).to(device)
            self.module = torch.jit.trace(path, torch.from_numpy(example).to(device), check_trace=False)

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.module(to_device(torch.from_numpy(np.ascontiguousarray(batch)), self.device))
        return scores.cpu().numpy(), maps.cpu().numpy()

    def eager(self, what: str):
        raise RuntimeError(f"{what} needs the PyTorch model")


def median_ms(detector: Detector, images: np.ndarray, batch: int, repeats: int) -> float:
    """Median ms per image over ``repeats`` passes of ``images`` in batches of ``batch``, after a warm-up pass."""
    times = []
    for i in range(repeats + 1):
        synchronize(detector.device)
        t = time.perf_counter()
        for start in range(0, len(images) - batch + 1, batch):
            detector.run(images[start:start + batch])
        synchronize(detector.device)
        if i:  # the first pass warms up (allocator, cuDNN's choice per shape)
            times.append((time.perf_counter() - t) / (len(images) // batch * batch))
    return 1000.0 * statistics.median(times)


# what the default detector chose on validation on tire (docs/benchmarks.md): an untrained one is timed with it
CHOSEN = ["scoring.map=nll", "scoring.image_map=fastflow", "scoring.image_score=topk"]


def load_model(spec: dict, device: torch.device) -> tuple[Detector, str]:
    """The detector timed: the train stage's checkpoint, else the default config's, untrained."""
    from ssnf.configfile import load_config

    checkpoint = Path(spec.get("checkpoint") or "")
    if checkpoint.is_file():
        return Detector.load(checkpoint, device=device), f"checkpoint {checkpoint.name} of the train stage"
    cfg = load_config(None, [*spec.get("sets", []), *CHOSEN], spec["data_root"], spec["category"])
    return Detector.build(cfg, device), "untrained default detector (the train stage left no checkpoint)"


def images_of(detector: Detector, count: int = 32) -> tuple[np.ndarray, list[Path]]:
    """``count`` training images of the detector's category at its size (repeated where there are fewer), and the
    files of the first ``count``."""
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.features import load_images

    samples = make_splits(load_index(detector.cfg.data), detector.cfg.data).train[:count]
    images = load_images(samples, detector.size)
    return np.resize(images, (count, *images.shape[1:])), [s.image for s in samples]


def backends(detector: Detector, spec: dict, device: torch.device, example: np.ndarray):
    """(name, a function building that backend's Detector, or the reason it is not run)."""
    model = detector.eager("timing").model
    yield "eager_fp32", partial(eager, model, detector, "fp32", device)  # first: the others' scores are held to it
    yield "eager_bf16", partial(eager, model, detector, "bf16", device)
    yield "torchscript", partial(traced, detector, device, example)
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
        yield "onnx", f"no CUDA provider in this onnxruntime ({', '.join(providers)})"
        return

    def onnx():
        from ssnf.export import export

        path = export(detector, Path(spec["work"]) / "model.onnx", "onnx")
        return Detector.load(path, device=device, batch_size=32)

    yield "onnx", onnx


def eager(model, detector: Detector, precision: str, device: torch.device) -> Detector:
    """A copy of ``model`` in PyTorch, in ``precision`` (``ssnf predict --precision``)."""
    return Detector.from_model(copy.deepcopy(model), detector.cfg, device, batch_size=32, precision=precision)


def traced(detector: Detector, device: torch.device, example: np.ndarray) -> Detector:
    return Detector(TracedBackend(detector, device, example), detector.cfg, detector.thresholds)


def time_backend(make, images: np.ndarray, spec: dict, device: torch.device, reference) -> dict:
    """One backend: build, ms/image at each batch size (batch 1 over the first ``spec["b1_images"]`` images), peak
    GPU memory, largest score difference from ``reference``."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    detector = make()
    out = {"build_s": time.perf_counter() - t, "device": str(detector.device)}
    for batch in BATCHES:
        out[f"b{batch}_ms"] = median_ms(detector, images[:spec["b1_images"]] if batch == 1 else images, batch,
                                        spec["repeats"])
    scores = detector.run(images)[0]
    out["max_score_diff_vs_fp32"] = None if reference is None else float(np.abs(scores - reference).max())
    out.update(cuda_memory(device))
    return out, scores


def run_cli(spec: dict, files: list[Path], device: torch.device) -> dict:
    """``ssnf predict`` on ``files`` (decoding, resizing, the model, the table; no maps, overlays or masks written)."""
    from ssnf.cli import main as ssnf

    checkpoint = Path(spec.get("checkpoint") or "")
    if not checkpoint.is_file():
        return {"skipped": "no checkpoint from the train stage"}
    args = ["predict", "--checkpoint", str(checkpoint), "--device", device.type, "--batch-size", "32", "--maps", "none",
            "--no-overlays", "--no-masks", "--quiet", "--out", str(Path(spec["work"]) / "predict-out"),
            *map(str, files)]
    t = time.perf_counter()
    code = ssnf(args)
    seconds = time.perf_counter() - t
    return {"returncode": code, "images": len(files), "seconds": seconds, "ms_per_image": 1000 * seconds / len(files),
            "args": " ".join(args[:12]) + " ..."}


def run_predict(spec: dict) -> dict:
    device = torch.device(spec["device"])
    detector, described = load_model(spec, device)
    images, files = images_of(detector)
    out = {"model": described, "images": len(images), "size": detector.size, "device": str(device),
           "scoring": detector.scoring.map, "default_backend": f"eager_{DEPLOY_PRECISION}", "backends": {}}
    reference = None
    for name, make in list(backends(detector, spec, device, images[:2])):
        if isinstance(make, str):
            out["backends"][name] = {"skipped": make}
            print(f"{name}: {make}", flush=True)
            continue
        try:
            out["backends"][name], scores = time_backend(make, images, spec, device, reference)
            reference = scores if name == "eager_fp32" else reference
        except Exception as exc:  # noqa: BLE001 - recorded; the next backend still runs
            out["backends"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        print(f"{name}: {out['backends'][name]}", flush=True)
    try:
        out["cli"] = run_cli(spec, files, device)
    except Exception as exc:  # noqa: BLE001
        out["cli"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return out
