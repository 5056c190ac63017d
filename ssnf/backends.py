"""Inference backends: what runs a batch of images for a ``Detector``, behind one contract.

A backend is called on a batch the detector prepared (``uint8 [B, S, S, 3]``, RGB, at the model's size) and
returns ``(scores [B], maps [B, S, S])``, float32 NumPy arrays. Each one has

- ``name``: ``pytorch`` | ``torchscript`` | ``onnx``; ``device``; ``scoring``: the resolved scoring it computes;
- ``precision``: the arithmetic its scores come from (thresholds are kept per precision: bf16 and fp32 scores
  differ); a file ``ssnf.export`` wrote computes in ``EXPORT_PRECISION``;
- ``model``: the ``SSNFModel`` it runs, None for a file;
- ``eager(what)``: the backend itself where it runs the PyTorch model (``EagerBackend``: scoring backbone
  features, calibrating thresholds and exporting need it), else a one-line error saying ``what`` needs it.

``EagerBackend`` runs ``InferencePath`` (the whole path as one ``nn.Module``: what ``ssnf.export`` traces) in
``train.precision``; ``TorchScriptBackend`` and ``OnnxBackend`` run an exported file, whose metadata (the
``Detector.metadata()`` of the detector it came from) ``read_metadata`` reads. ``file_kind`` tells a checkpoint
from an exported file by its contents, ``pick_device`` resolves ``--device`` for it.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssnf.config import ScoringConfig, SSNFConfig, from_dict
from ssnf.devices import configure, to_device
from ssnf.errors import SSNFError
from ssnf.model.detector import SSNFModel
from ssnf.scoring import Sources, needs, resolve, resolved_kinds, score

METADATA_KEY = "ssnf"  # exported files: the JSON of ``Detector.metadata()`` under this key
EXPORT_FORMAT = "ssnf-export/1"
EXPORT_PRECISION = "fp32"  # exported files compute in float32 (autocast does not export)
# a loaded detector computes in float32 by default whatever train.precision was, so that a checkpoint and its
# exported file give the same scores and verdicts (bf16 and fp32 scores of one model differ: docs/benchmarks.md)
DEPLOY_PRECISION = EXPORT_PRECISION


class InferencePath(nn.Module):
    """``uint8 [B, H, W, 3] -> (scores [B], maps [B, S, S])``: resize, normalise, backbone, flows and / or memory
    bank (what the resolved scoring's maps need), scoring."""

    def __init__(self, model: SSNFModel, scoring: ScoringConfig, size: int) -> None:
        super().__init__()
        self.model = model
        self.scoring = scoring
        self.size = int(size)
        self.flows, self.bank = needs(resolved_kinds(scoring))
        if self.bank and model.bank is None:
            kinds = ", ".join(dict.fromkeys(resolved_kinds(scoring)))
            raise SSNFError(f"the scoring uses the memory bank ({kinds}) and this model has none: train it with "
                            "bank.enabled=true")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        # the identity at the model's size; otherwise torch's antialiased bilinear (PIL's filter, as in training)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.score_features(self.model.extractor(x))

    def score_features(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The path after the backbone: flows and scoring of per-scale features."""
        bank = self.model.bank if self.bank else None
        sources = Sources(self.model.flow_features(features) if self.flows else None,
                          bank(features) if bank is not None else None, bank.fusion if bank is not None else None)
        maps, scores = score(sources, self.scoring, (self.size, self.size))
        return scores.float(), maps.float()


class Backend(Protocol):
    """The contract: a prepared batch in, ``(scores, maps)`` out; what the backend is and what it can do."""

    name: str
    device: torch.device
    scoring: ScoringConfig
    model: SSNFModel | None

    @property
    def precision(self) -> str: ...

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def eager(self, what: str) -> "EagerBackend": ...


class EagerBackend:
    """The PyTorch model through ``InferencePath``, in ``precision`` (default ``train.precision``;
    ``model.set_precision`` changes it)."""

    name = "pytorch"

    def __init__(self, model: SSNFModel, cfg: SSNFConfig, device: str | torch.device | None = None,
                 precision: str | None = None) -> None:
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        configure(self.device)
        self.model = model.to(self.device).eval()
        self.model.set_precision(precision or cfg.train.precision)
        self.path = InferencePath(self.model, resolve(cfg.scoring, model.scoring), cfg.data.image_size)
        self.scoring: ScoringConfig = self.path.scoring

    @property
    def precision(self) -> str:
        return self.model.precision

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        # (a copy only where the batch is read-only, e.g. an array from Ray's object store)
        scores, maps = self.path(to_device(torch.from_numpy(np.require(batch, requirements=["C", "W"])), self.device))
        return scores.cpu().numpy(), maps.cpu().numpy()

    @torch.no_grad()
    def score_features(self, features: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and maps of backbone features already extracted (per scale ``[B, C, h, w]``)."""
        self.model.eval()
        scores, maps = self.path.score_features([to_device(f, self.device) for f in features])
        return scores.cpu().numpy(), maps.cpu().numpy()

    def eager(self, what: str) -> "EagerBackend":
        return self


class FileBackend:
    """What the two exported-file backends share: the file, its metadata, float32 arithmetic, no PyTorch model."""

    name = "file"
    precision = EXPORT_PRECISION
    model = None

    def __init__(self, path: Path, device: str | torch.device) -> None:
        self.source = Path(path)
        self.device = torch.device(device)
        self.metadata = read_metadata(self.source, self.name)
        self.scoring = from_dict(ScoringConfig, self.metadata["scoring"], "scoring.")

    def eager(self, what: str) -> EagerBackend:
        raise SSNFError(f"{what} needs the PyTorch model: {self.source} is an exported {self.name} file; "
                        "use its checkpoint")


class TorchScriptBackend(FileBackend):
    name = "torchscript"

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        super().__init__(path, device)
        try:
            self.module = _jit_load(self.source, self.device).eval()
        except Exception as exc:
            raise SSNFError(f"cannot load {path} as TorchScript: {exc}".splitlines()[0]) from None

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.module(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return scores.cpu().numpy(), maps.cpu().numpy()


class OnnxBackend(FileBackend):
    name = "onnx"

    def __init__(self, path: Path, device: str | torch.device = "cpu", threads: int = 0) -> None:
        super().__init__(path, device)
        self.session = onnx_session(self.source, self.device, threads)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(["scores", "maps"], {"images": np.ascontiguousarray(batch)})
        return scores, maps


def open_file(path: Path, kind: str, device: str | torch.device = "cpu", threads: int = 0) -> FileBackend:
    """The backend of an exported file of ``kind`` (``file_kind``: ``torchscript`` or ``onnx``)."""
    if kind == "torchscript":
        return TorchScriptBackend(path, device)
    return OnnxBackend(path, device, threads)


def file_kind(path: Path) -> str:
    """``checkpoint``, ``onnx`` or ``torchscript``: what ``path`` holds, from its contents."""
    with open(path, "rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith(f"extra/{METADATA_KEY}.json") for n in names):
            return "torchscript"
        if any("/code/" in n for n in names):
            raise SSNFError(f"{path} is a TorchScript file that ssnf did not export (no {METADATA_KEY}.json)")
        return "checkpoint"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":  # ONNX: a protobuf starting with ir_version
        return "onnx"
    raise SSNFError(f"{path} is neither an ssnf checkpoint nor a file ssnf exported (ONNX, TorchScript)")


def pick_device(device: str | torch.device, kind: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU (and, for an ONNX file, onnxruntime has its CUDA provider), else CPU;
    ``cuda`` where there is none: one line."""
    name = str(device)
    if name == "auto":
        usable = torch.cuda.is_available() and kind != "torchscript"
        if usable and kind == "onnx":
            try:
                import onnxruntime as ort

                usable = "CUDAExecutionProvider" in ort.get_available_providers()
            except ImportError:
                usable = False
        return torch.device("cuda" if usable else "cpu")
    if kind == "torchscript":
        if name.startswith("cuda"):
            raise SSNFError("an exported TorchScript file runs on the CPU (it was traced there): use the checkpoint "
                            "or the ONNX file on a GPU")
        return torch.device("cpu")
    if name.startswith("cuda") and kind != "onnx" and not torch.cuda.is_available():
        raise SSNFError("--device cuda, but torch sees no CUDA device here")
    return torch.device(name)


def onnx_session(path: Path, device: str | torch.device = "cpu", threads: int = 0):
    """An ONNX Runtime session on ``device`` (``cuda``: its CUDA provider, refused where it is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SSNFError(f"{path} is an ONNX file: install onnxruntime to run it") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SSNFError(f"--device cuda: this onnxruntime has no CUDA provider ({', '.join(ort.get_available_providers())})")
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise SSNFError(f"onnxruntime cannot load {path}: {exc}".splitlines()[0]) from None


def read_metadata(path: Path, kind: str) -> dict:
    """The ``Detector.metadata()`` an exported file carries."""
    try:
        if kind == "torchscript":
            extra = {f"{METADATA_KEY}.json": ""}
            _jit_load(path, "cpu", extra)
            raw = extra[f"{METADATA_KEY}.json"]
        else:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            raw = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), "")
    except Exception as exc:
        raise SSNFError(f"cannot read {path} as {kind}: {exc}".splitlines()[0]) from None
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise SSNFError(f"{path} carries no ssnf metadata of format {EXPORT_FORMAT}: export it again with this ssnf")
    return meta


def _jit_load(path: Path, device, extra: dict | None = None):
    """``torch.jit.load`` without its deprecation notice (TorchScript is one of the two export formats asked for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device, _extra_files=extra or {})
