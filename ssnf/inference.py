"""The one inference path: a trained detector behind one object, images in, scores, maps and verdicts out.

``InferencePath`` is the whole path as one module: RGB ``uint8`` images ``[B, H, W, 3]`` of any size are
resized to the model's size (bilinear, antialiased, as the training images were), scaled to [0, 1],
normalised with the backbone's statistics, through the frozen backbone and the flows, and scored with the
model's resolved scoring: ``(image scores [B], maps [B, S, S])``. ``ssnf.export`` traces exactly this module.

``Detector`` owns everything around it, so that no caller can resize, normalise, score or threshold
differently: grey images become RGB, each image is resized on the host exactly as training resized it (the
path's own resize is then the identity: it serves callers of an exported file), batches run in the precision
the model was trained in (``train.precision``), and the threshold set on validation normals
(``ssnf.threshold``) gives the verdicts and masks. It runs a checkpoint (PyTorch) or an exported file
(TorchScript, ONNX Runtime) behind the same methods. ``evaluate``, the sweep's test pass, ``ssnf predict``
and the benchmarks all call it.

    detector = Detector.load("models/tire/checkpoint.pt")   # or model.onnx / model.torchscript
    prediction = detector.predict(["part.png"])              # paths, or uint8 arrays of any size
    prediction.scores, prediction.maps, prediction.anomalous  # [N], [N, S, S], [N] bool
    ssnf.export.export(detector, "tire.onnx", "onnx")  # the layer above: it imports this module
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssnf.config import ScoringConfig, SSNFConfig, ThresholdConfig, from_dict, to_dict
from ssnf.data.dataset import resize_image
from ssnf.data.io import open_image, to_uint8
from ssnf.errors import DataError, SSNFError
from ssnf.model.detector import SSNFModel
from ssnf.prepared import ValidationSet
from ssnf.scoring import Sources, needs, resolve, resolved_kinds, score
from ssnf.threshold import Threshold, fit_threshold

METADATA_KEY = "ssnf"  # exported files: the JSON of ``Detector.metadata()`` under this key
EXPORT_FORMAT = "ssnf-export/1"


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


@dataclass
class Prediction:
    scores: np.ndarray  # [N] image scores (higher: more anomalous)
    maps: np.ndarray  # [N, S, S] float32 anomaly maps at the model's input size
    threshold: Threshold | None = None  # the detector's, when it has one

    @property
    def anomalous(self) -> np.ndarray:
        """``[N]`` bool verdicts: the image score above the image threshold."""
        return self.scores > self._threshold().image

    @property
    def masks(self) -> np.ndarray:
        """``[N, S, S]`` bool: the map above the pixel threshold."""
        return self.maps > self._threshold().pixel

    def _threshold(self) -> Threshold:
        if self.threshold is None:
            raise SSNFError("this model has no threshold: calibrate it (ssnf calibrate --checkpoint ...)")
        return self.threshold


class Detector:
    """A trained detector: ``predict`` images, ``threshold``; from a checkpoint or an exported file (``ssnf.export``
    writes one from a detector)."""

    def __init__(self, model: SSNFModel, cfg: SSNFConfig, device: str | torch.device | None = None,
                 batch_size: int = 32) -> None:
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(device).eval()
        self.model.set_precision(cfg.train.precision)
        scoring = resolve(cfg.scoring, model.scoring)
        self.path = InferencePath(self.model, scoring, cfg.data.image_size)
        self._setup(cfg, scoring, device, batch_size, "pytorch", model.threshold, self._run_eager)

    def _setup(self, cfg: SSNFConfig, scoring: ScoringConfig, device: torch.device, batch_size: int, backend: str,
               threshold: Threshold | None, run) -> None:
        """What every detector has, whichever backend runs it (``run``: a prepared batch -> scores, maps)."""
        self.cfg = cfg
        self.scoring: ScoringConfig = scoring
        self.device = device
        self.batch_size = batch_size
        self.backend = backend
        self.source: Path | None = None
        self._threshold = threshold
        self._run = run

    @property
    def threshold(self) -> Threshold | None:
        """The thresholds of the arithmetic this detector runs in (``train.precision``; exported files: fp32)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: Threshold | None) -> None:
        self._threshold = value
        if self.model is not None:
            self.model.threshold = value

    @property
    def size(self) -> int:
        return self.cfg.data.image_size

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32,
             threads: int = 0) -> "Detector":
        """The detector in ``path``: an ssnf checkpoint, or a file ``export`` wrote (ONNX or TorchScript).
        ``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA where this file's runtime can use it)."""
        path = Path(path)
        if not path.is_file():
            raise SSNFError(f"model file {path} does not exist")
        kind = file_kind(path)
        device = pick_device(device, kind)
        if kind == "checkpoint":
            from ssnf.checkpoint import load_checkpoint

            ckpt = load_checkpoint(path, device)
            detector = cls(ckpt.model, ckpt.config, device, batch_size)
        else:
            detector = _exported(path, kind, device, batch_size, threads)
        detector.source = path
        return detector

    @classmethod
    def build(cls, cfg: SSNFConfig, device: str | torch.device = "cpu", **kwargs) -> "Detector":
        """An untrained detector of ``cfg`` (its flows at their initialisation): for timing and tests."""
        return cls(SSNFModel.build(cfg.backbone, cfg.model, cfg.train.seed), cfg, device, **kwargs)

    # -- images in ---------------------------------------------------------------------------------------

    def prepare(self, images: np.ndarray | Sequence) -> np.ndarray:
        """Paths or ``uint8`` images (RGB ``[H, W, 3]``, grey ``[H, W]`` / ``[H, W, 1]``, RGBA) of any size ->
        ``uint8 [N, S, S, 3]`` at the model's size, resized as the training images were."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise DataError(f"an array of images must be [N, H, W, C], got {tuple(images.shape)}: pass one image "
                                "as a list of one, or as [1, H, W, C]")
            if images.shape[1:] == (self.size, self.size, 3) and images.dtype == np.uint8:
                return images
        if len(images) == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return np.stack([resize_image(as_rgb(image), self.size) for image in images])

    def predict(self, images: np.ndarray | Sequence) -> Prediction:
        """Scores, maps (and, with a threshold, verdicts and masks) of images: paths or arrays (see ``prepare``)."""
        images = self.prepare(images)
        scores, maps = [], []
        for start in range(0, len(images), self.batch_size):
            s, m = self._run(images[start:start + self.batch_size])
            scores.append(s)
            maps.append(m)
        return self._joined(scores, maps)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backend on one prepared batch (``uint8 [B, S, S, 3]``): ``(scores, maps)``; benchmarks time this."""
        return self._run(batch)

    def predict_files(self, paths: Sequence[str | Path]) -> Prediction:
        """Scores and maps of image files (decoded as the training images were)."""
        return self.predict([Path(p) for p in paths])

    @torch.no_grad()
    def predict_features(self, features: list[torch.Tensor]) -> Prediction:
        """Scores and maps from backbone features already extracted (per scale ``[N, C, h, w]``): PyTorch only."""
        self.require_model("predict_features")
        self.model.eval()
        scores, maps = [], []
        for start in range(0, len(features[0]), self.batch_size):
            s, m = self.path.score_features([f[start:start + self.batch_size].to(self.device) for f in features])
            scores.append(s.cpu().numpy())
            maps.append(m.cpu().numpy())
        return self._joined(scores, maps)

    @torch.no_grad()
    def _run_eager(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        # (a copy only where the batch is read-only, e.g. an array from Ray's object store)
        scores, maps = self.path(torch.from_numpy(np.require(batch, requirements=["C", "W"])).to(self.device))
        return scores.cpu().numpy(), maps.cpu().numpy()

    def _joined(self, scores: list[np.ndarray], maps: list[np.ndarray]) -> Prediction:
        if not scores:
            return Prediction(np.zeros(0, np.float32), np.zeros((0, self.size, self.size), np.float32), self.threshold)
        return Prediction(np.concatenate(scores).astype(np.float32, copy=False),
                          np.concatenate(maps).astype(np.float32, copy=False), self.threshold)

    # -- thresholds --------------------------------------------------------------------------------------

    def calibrate(self, validation: ValidationSet, cfg: ThresholdConfig | None = None) -> Threshold:
        """Set the thresholds from a ``ValidationSet`` (its images through this very path: the normals' scores
        and maps, the reference anomalies' scores for ``threshold.method=f1``), in the training precision and, when
        that is not fp32, in fp32 too (what an exported file computes: bf16 and fp32 scores differ). Returns the
        training precision's. Test images never come here."""
        self.require_model("calibrate")
        if validation.images is None:
            raise SSNFError("this validation set keeps no images (a subset): build it with prepared.build_validation")
        cfg = cfg or self.cfg.threshold
        normal = validation.clean_normals  # the nuisance normals are not the line as it was: they are measured apart
        anomalous = np.asarray(validation.labels) == 1
        own = self.cfg.train.precision
        for precision in dict.fromkeys((own, "fp32")):
            self.model.set_precision(precision)
            prediction = self.predict(validation.images)
            self.model.threshold = fit_threshold(prediction.scores[normal], prediction.scores[anomalous],
                                                 prediction.maps[normal], cfg, precision, to_dict(self.scoring))
        self.model.set_precision(own)
        self._threshold = self.model.threshold
        return self._threshold

    def with_threshold(self, fpr: float | None = None, pixel_fpr: float | None = None,
                       method: str | None = None) -> "Detector":
        """This detector with its thresholds re-read at another rate or method (from the normals they rest on)."""
        if fpr is None and pixel_fpr is None and method is None:
            return self
        if self.threshold is None:
            raise SSNFError(f"{self.source or 'this model'} has no threshold to re-read: calibrate it first "
                            "(ssnf calibrate --checkpoint ...)")
        if self.model is not None:
            self.model.thresholds = {k: t.at(fpr, pixel_fpr, method) for k, t in self.model.thresholds.items()}
            self._threshold = self.model.threshold
        else:
            self._threshold = self._threshold.at(fpr, pixel_fpr, method)
        return self

    # -- out ---------------------------------------------------------------------------------------------

    def metadata(self) -> dict:
        """What an exported file carries: the config, the resolved scoring, the threshold, the input contract."""
        return {"format": EXPORT_FORMAT, "config": to_dict(self.cfg), "scoring": to_dict(self.scoring),
                "threshold": self.export_threshold().to_dict() if self.export_threshold() is not None else None,
                "input": {"name": "images", "dtype": "uint8", "shape": ["batch", "height", "width", 3],
                          "colour": "RGB"},
                "outputs": {"scores": ["batch"], "maps": ["batch", self.size, self.size]}}

    def export_threshold(self) -> Threshold | None:
        """The thresholds an exported file carries: those of float32 scores (exports compute in float32)."""
        if self.model is None:
            return self._threshold
        return self.model.thresholds.get("fp32")

    def require_model(self, what: str) -> None:
        if self.model is None:
            raise SSNFError(f"{what} needs the PyTorch model: {self.source} is an exported {self.backend} file; "
                            "use its checkpoint")


def as_rgb(image) -> np.ndarray:
    """A path or a ``uint8`` / ``uint16`` image (RGB, grey ``[H, W]`` or ``[H, W, 1]``, RGBA) -> ``uint8 [H, W, 3]``
    (16-bit levels scaled as ``ssnf.data.io.to_uint8`` scales 16-bit files)."""
    if isinstance(image, (str, Path)):
        return np.asarray(open_image(Path(image)))
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = to_uint8(image, sixteen_bit=True)
    if image.dtype == np.uint8:
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim == 3 and image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[:, :, :3])
    raise DataError(f"expected a uint8 or uint16 image [H, W, 3] (RGB), [H, W] (grey) or [H, W, 4] (RGBA), "
                    f"got {image.dtype} {tuple(image.shape)}")


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


class _TorchScriptRunner:
    def __init__(self, module, device: torch.device) -> None:
        self.module, self.device = module, device

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.module(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return scores.cpu().numpy(), maps.cpu().numpy()


class _OnnxRunner:
    def __init__(self, session) -> None:
        self.session = session

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(["scores", "maps"], {"images": np.ascontiguousarray(batch)})
        return scores, maps


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
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device, _extra_files=extra or {})


def _exported(path: Path, kind: str, device, batch_size: int, threads: int) -> Detector:
    meta = read_metadata(path, kind)
    device = torch.device(device)
    if kind == "torchscript":
        try:
            module = _jit_load(path, device)
        except Exception as exc:
            raise SSNFError(f"cannot load {path} as TorchScript: {exc}".splitlines()[0]) from None
        run = _TorchScriptRunner(module.eval(), device)
    else:
        run = _OnnxRunner(onnx_session(path, device, threads))
    detector = Detector.__new__(Detector)  # no PyTorch model behind it: only what every detector has
    detector.model, detector.path = None, None
    detector._setup(from_dict(SSNFConfig, meta["config"]), from_dict(ScoringConfig, meta["scoring"], "scoring."),
                    device, batch_size, kind, Threshold.from_dict(meta["threshold"]) if meta.get("threshold") else None,
                    run)
    return detector
