"""Exporting a detector: the whole inference path in one file that runs without this repository.

``export(detector, path, "onnx" | "torchscript")`` writes ``InferencePath`` (resize and normalise, frozen
backbone, flows, anomaly map, image score): input ``images`` ``uint8 [batch, height, width, 3]`` (RGB, any
batch and size), outputs ``scores [batch]`` and ``maps [batch, S, S]`` (float32, at the model's size). The
detector's ``metadata()`` (config, resolved scoring, thresholds, the input contract) travels in the file: ONNX
``metadata_props["ssnf"]``, TorchScript's extra file ``ssnf.json``. ``Detector.load`` reads both back.

The exported arithmetic is float32 whatever ``train.precision`` was (autocast does not export). A bf16-trained
model's float32 scores differ from its bf16 ones (on tire by up to 0.18, ``bench/deploy.py``), so the file
carries the thresholds calibrated on float32 scores (``Detector.calibrate`` sets both after training) and its
verdicts hold their own false-positive rate, not the checkpoint's verdicts image for image. ONNX goes through ``torch.export`` (``dynamo=True``; the older TorchScript-based ONNX exporter
cannot write the antialiased resize), opset 18 (``Resize`` with ``antialias``).

After writing, ``verify`` loads the file and runs it on generated images beside the float32 PyTorch path:
maps and scores must agree within ``ATOL`` + ``RTOL`` and every verdict must be the same, or the export fails.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from ssnf.backends import EXPORT_PRECISION, METADATA_KEY, InferencePath
from ssnf.config import ExportFormat
from ssnf.errors import SSNFError
from ssnf.files import atomic_path
from ssnf.inference import Detector

FORMATS = get_args(ExportFormat)
OPSET = 18
ATOL, RTOL = 1e-3, 1e-3  # float32 parity of an exported file with the PyTorch path (maps and scores)
MAX_SIDE = 16384  # the largest image side an ONNX file accepts (a bound torch.export needs)


def float32_path(detector: Detector) -> InferencePath:
    """A float32 copy of ``detector``'s inference path (the model in eval mode, autocast off)."""
    model = copy.deepcopy(detector.eager("export").model).cpu().eval().set_precision(EXPORT_PRECISION)
    return InferencePath(model, detector.scoring, detector.size).eval()


def example_images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Generated ``uint8 [batch, size, size, 3]`` images with structure (smooth gradients, blobs, noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(batch):
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (rng.uniform(1, 4) * xx + rng.uniform(1, 4) * yy))[..., None]
        colour = base * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 0.05, (size, size, 3))
        cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.15)]
        colour[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] *= rng.uniform(0.2, 0.6)
        images.append(np.clip(colour * 255, 0, 255).astype(np.uint8))
    return np.stack(images)


def export(detector: Detector, path: Path, fmt: str, verify: bool = True) -> Path:
    """Write ``detector``'s inference path to ``path`` in ``fmt``; check it against PyTorch (``verify``)."""
    detector.eager("export")  # a file ssnf exported is exported again from its checkpoint
    if fmt not in FORMATS:
        raise SSNFError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = float32_path(detector)
    example = torch.from_numpy(example_images(detector.size))
    metadata = json.dumps(detector.metadata(), sort_keys=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes read as constants (the map size is fixed)
        with atomic_path(path) as tmp:  # a file that fails its check never takes the name
            if fmt == "torchscript":
                _torchscript(module, example, tmp, metadata)
            else:
                _onnx(module, example, tmp, metadata)
            if verify:
                check_parity(detector, tmp, module)
    return path


def _torchscript(module: InferencePath, example: torch.Tensor, out: Path, metadata: str) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": metadata})


def _onnx(module: InferencePath, example: torch.Tensor, out: Path, metadata: str) -> None:
    import onnx

    dim = torch.export.Dim
    shapes = {"images": {0: dim("batch", min=1, max=4096), 1: dim("height", min=8, max=MAX_SIDE),
                         2: dim("width", min=8, max=MAX_SIDE)}}
    try:
        with torch.no_grad():
            program = torch.onnx.export(module, (example,), None, input_names=["images"],
                                        output_names=["scores", "maps"], dynamic_shapes=shapes, dynamo=True,
                                        opset_version=OPSET, verbose=False)
    except Exception as exc:
        raise SSNFError(f"ONNX export failed: {exc}".splitlines()[0]) from None
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    model.producer_name = "ssnf"
    onnx.save(model, str(out))


def check_parity(detector: Detector, path: Path, module: InferencePath | None = None, images: np.ndarray | None = None,
                 atol: float = ATOL, rtol: float = RTOL) -> dict:
    """Run the file at ``path`` and the float32 PyTorch path on ``images`` (default: generated, two sizes);
    raise when maps or scores differ beyond ``atol + rtol * |value|`` or a verdict differs. Returns the largest
    differences."""
    module = module or float32_path(detector)
    exported = Detector.load(path)
    batches = [images] if images is not None else [example_images(detector.size, 3, seed=1),
                                                   example_images(detector.size + 24, 1, seed=2)]
    worst = {"scores": 0.0, "maps": 0.0}
    for batch in batches:
        with torch.no_grad():
            ref_scores, ref_maps = (t.numpy() for t in module(torch.from_numpy(batch)))
        scores, maps = exported.run(batch)
        for name, ref, got in (("scores", ref_scores, scores), ("maps", ref_maps, maps)):
            if got.shape != ref.shape:
                raise SSNFError(f"exported {path}: {name} has shape {got.shape}, PyTorch gives {ref.shape}")
            excess = np.abs(got - ref) - (atol + rtol * np.abs(ref))
            worst[name] = max(worst[name], float(np.abs(got - ref).max(initial=0.0)))
            if (excess > 0).any():
                raise SSNFError(f"exported {path}: {name} differ from PyTorch by up to {np.abs(got - ref).max():.3g} "
                                f"(tolerance {atol} + {rtol} x value)")
        if exported.threshold is not None:
            cut = exported.threshold.image
            if ((scores > cut) != (ref_scores > cut)).any():
                raise SSNFError(f"exported {path}: a verdict differs from PyTorch's at threshold {cut:.6g}")
    return worst
