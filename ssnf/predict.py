"""``ssnf predict``: a detector over image files, folders and globs, one row per file, maps, overlays, masks.

Per image (all at the image's own size): the anomaly map (``maps/``: a 16-bit PNG whose grey levels span the
map's own range, kept in the row and in the PNG's ``ssnf_map_range`` text, or ``.npy`` float32), a heatmap
overlay (``overlays/``: coloured on one scale for the whole model, from the normal pixels' median to twice the
pixel threshold's distance above it, the mask's outline drawn) and the binary mask (``masks/``: the map above
the pixel threshold). Output files mirror the inputs' paths below their common folder, extensions kept
(``cam1/a.jpg`` -> ``maps/cam1/a.jpg.png``: ``a.png`` and ``a.jpg`` stay apart). Folders are walked
recursively, leaving out hidden entries, the output folder and earlier runs' folders.

One table for the run, ``predictions.parquet`` and ``predictions.csv`` (``COLUMNS``), written also when a run
is interrupted (the rows done so far), and ``run.json`` (the model, its threshold, what it rests on and what it
promises, counts, and the drift check of the run's images against the calibration normals: ``ssnf.drift``).
A file that cannot be decoded is a row with ``status=failed`` and its error, and the run goes on; a file in a
folder that is not an image by its extension is a row with ``status=skipped``. An output folder that holds
another run's table is refused unless ``overwrite``.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, get_args

import cv2
import numpy as np
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from ssnf.config import MapFormat
from ssnf.data.io import IMAGE_EXTENSIONS, open_image
from ssnf.drift import LEVEL, STATS, DriftReport, check
from ssnf.errors import SSNFError
from ssnf.files import atomic_path
from ssnf.evaluate import overlay
from ssnf.inference import Detector

MAP_FORMATS = get_args(MapFormat)
FAST_PNG = 1  # zlib level of the per-image PNGs: a line writes thousands; level 6 (PIL's default) costs more time than the model
TABLE = "predictions"
COLUMNS = ("path", "status", "error", "score", "verdict", "threshold", "fpr", "anomalous_fraction", "height", "width",
           "map", "map_min", "map_max", "overlay", "mask", "time_ms", "io_ms")


@dataclass
class Inputs:
    images: list[Path]  # files to score, in order
    skipped: list[Path] = field(default_factory=list)  # files in the folders that are not images by their extension
    root: Path | None = None  # their common folder (output names are relative to it); None: computed

    def __post_init__(self) -> None:
        if self.root is None and self.images:
            self.root = Path(os.path.commonpath([p.resolve().parent for p in self.images + self.skipped]))


def is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def is_run_folder(folder: Path) -> bool:
    """A folder an ``ssnf predict`` run wrote (its table and ``run.json``)."""
    return (folder / "run.json").is_file() and (folder / f"{TABLE}.parquet").is_file()


def walk(folder: Path, exclude: Path | None = None) -> list[Path]:
    """The files below ``folder``, sorted; hidden files and folders, ``exclude`` and the folders of earlier
    ``ssnf predict`` runs (their maps and overlays are not parts to inspect) are left out."""
    found = []
    for here, dirs, files in os.walk(folder):
        base = Path(here)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_run_folder(base / d)
                         and (exclude is None or (base / d).resolve() != exclude))
        found += [base / f for f in sorted(files) if not f.startswith(".")]
    return sorted(found)


def collect_inputs(items: Sequence[str | Path], exclude: Path | None = None) -> Inputs:
    """Image files, folders (recursive) and globs -> the files to score, in a stable order, without repeats.
    ``exclude``: a folder never walked into (the run's output folder, when it lies inside an input folder)."""
    images: dict[Path, None] = {}
    skipped: dict[Path, None] = {}
    exclude = exclude.resolve() if exclude is not None else None
    for item in items:
        text = str(item)
        if is_pattern(text) and not Path(text).expanduser().exists():
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise SSNFError(f"input {text!r} matches no file")
            paths = [Path(m) for m in matches]
        else:
            paths = [Path(text).expanduser()]
        for path in paths:
            if path.is_dir():
                for found in walk(path, exclude):
                    target = images if found.suffix.lower() in IMAGE_EXTENSIONS else skipped
                    target[found.resolve()] = None
            elif path.is_file():
                images[path.resolve()] = None
            elif not path.exists():
                raise SSNFError(f"input {path} does not exist")
    if not images:
        raise SSNFError(f"no image files in {', '.join(str(i) for i in items)} "
                        f"(images: {', '.join(IMAGE_EXTENSIONS)})")
    return Inputs(list(images), list(skipped))


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds another run's results (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise SSNFError(f"--out {out} is a file, not a folder")
    held = [p.name for p in (out / f"{TABLE}.parquet", out / f"{TABLE}.csv", out / "run.json") if p.exists()]
    if held and not overwrite:
        raise SSNFError(f"{out} holds another run's results ({', '.join(held)}): choose another --out, "
                        "or pass --overwrite")


def map_png16(path: Path, values: np.ndarray) -> tuple[float, float]:
    """Write ``values`` as a 16-bit grey PNG spanning their range; that range (also in the PNG's text)."""
    lo, hi = float(values.min()), float(values.max())
    scaled = np.round((values - lo) / max(hi - lo, 1e-12) * 65535.0).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("ssnf_map_range", f"{lo!r} {hi!r}")
    info.add_text("ssnf_map_decode", "value = min + grey / 65535 * (max - min)")
    Image.fromarray(scaled).save(path, pnginfo=info, compress_level=FAST_PNG)
    return lo, hi


def read_map_png16(path: Path) -> np.ndarray:
    """A map ``map_png16`` wrote, back in its own units (float32)."""
    with Image.open(path) as im:
        lo, hi = (float(v) for v in im.text["ssnf_map_range"].split())
        grey = np.asarray(im, dtype=np.float64)
    return (lo + grey / 65535.0 * (hi - lo)).astype(np.float32)


@dataclass
class Outputs:
    maps: str = "png16"  # png16 | npy | none
    overlays: bool = True
    masks: bool = True


class Writer:
    """Per-image files below ``out``, named after the input's path relative to ``root``."""

    def __init__(self, out: Path, root: Path, detector: Detector, outputs: Outputs) -> None:
        if outputs.maps not in MAP_FORMATS:
            raise SSNFError(f"--maps {outputs.maps!r} is not one of {', '.join(MAP_FORMATS)}")
        self.out, self.root, self.outputs = out, root, outputs
        threshold = detector.threshold
        self.pixel = threshold.pixel if threshold is not None else None
        lo = threshold.pixel_median if threshold is not None else None
        self.scale = (lo, lo + 2 * (self.pixel - lo)) if threshold is not None else None

    def _target(self, kind: str, source: Path, suffix: str) -> Path:
        """``out/kind/<the source's path below root, its extension kept>.<suffix>``: a.png and a.jpg stay apart."""
        rel = source.resolve().relative_to(self.root)
        path = self.out / kind / rel.with_name(rel.name + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, source: Path, image: np.ndarray, small_map: np.ndarray, row: dict) -> None:
        h, w = image.shape[:2]
        values = cv2.resize(small_map, (w, h), interpolation=cv2.INTER_LINEAR)
        row.update(map_min=float(values.min()), map_max=float(values.max()))
        if self.outputs.maps == "png16":
            row["map"] = str(self._target("maps", source, ".png"))
            map_png16(Path(row["map"]), values)
        elif self.outputs.maps == "npy":
            row["map"] = str(self._target("maps", source, ".npy"))
            np.save(row["map"], values.astype(np.float32))
        if self.pixel is None:
            if self.outputs.overlays:
                lo, hi = np.percentile(values, 1), np.percentile(values, 99.9)
                row["overlay"] = str(self._target("overlays", source, ".png"))
                Image.fromarray(overlay(image, values, np.zeros((h, w), bool), lo, hi)).save(row["overlay"], compress_level=FAST_PNG)
            return
        mask = values > self.pixel
        row["anomalous_fraction"] = float(mask.mean())
        if self.outputs.masks:
            row["mask"] = str(self._target("masks", source, ".png"))
            Image.fromarray((mask * 255).astype(np.uint8)).save(row["mask"], compress_level=FAST_PNG)
        if self.outputs.overlays:
            row["overlay"] = str(self._target("overlays", source, ".png"))
            Image.fromarray(overlay(image, values, mask, *self.scale)).save(row["overlay"], compress_level=FAST_PNG)


@dataclass
class PredictRun:
    rows: list[dict]
    out: Path
    wall_s: float
    drift: DriftReport | None = None  # the drift check of the scored images (None: not asked)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def anomalous(self) -> int:
        return sum(r.get("verdict") == "anomalous" for r in self.rows)


def _row(path: Path) -> dict:
    return dict.fromkeys(COLUMNS) | {"path": str(path)}


def drift_mode(detector: Detector, mode: str, level: float = LEVEL) -> bool:
    """``ssnf predict --drift auto|on|off --alarm-level L`` -> whether to run the drift check (``on`` without the
    calibration normals it needs, or a level outside (0, 1): one line, before any image is scored)."""
    if not 0.0 < level < 1.0:
        raise SSNFError(f"--alarm-level {level} must lie in (0, 1)")
    keeps = detector.threshold is not None and bool(detector.threshold.normal_scores)
    if mode == "on" and not keeps:
        raise SSNFError(f"--drift on: {detector.source} keeps no calibration normals to compare with: calibrate it "
                        "(ssnf calibrate --checkpoint ... [--normals ...]), or pass --drift off")
    return keeps and mode != "off"


def run_predict(detector: Detector, inputs: Inputs, out: Path, outputs: Outputs | None = None,
                progress: bool = False, overwrite: bool = False, drift_level: float | None = None) -> PredictRun:
    """Score every input with ``detector``; write the per-image files, the table and ``run.json`` in ``out``.
    Rows keep the inputs' order; a file that fails (decoding, a non-finite score, writing) is a ``failed`` row.
    ``drift_level``: check the scored images against the calibration normals at this level (``ssnf.drift``)."""
    out = Path(out)
    check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    writer = Writer(out, inputs.root, detector, outputs or Outputs())
    threshold = detector.threshold
    rows: list[dict] = []
    seen: dict[str, list] = {"scores": []} | {name: [] for name in STATS}  # the drift check's inputs
    t_start = time.perf_counter()
    bar = tqdm(total=len(inputs.images), desc="predict", unit="image", disable=not progress)
    try:
        for start in range(0, len(inputs.images), detector.batch_size):
            batch = [_row(path) for path in inputs.images[start:start + detector.batch_size]]
            decoded = {}
            for i, row in enumerate(batch):
                t = time.perf_counter()
                try:
                    image = np.asarray(open_image(Path(row["path"])))
                except Exception as exc:  # one unreadable file among thousands: its row says why, the run goes on
                    row.update(status="failed", error=_one_line(exc, row["path"]))
                    continue
                row.update(status="ok", height=image.shape[0], width=image.shape[1],
                           io_ms=1e3 * (time.perf_counter() - t))
                decoded[i] = image
            if decoded:
                t = time.perf_counter()
                prediction = detector.predict(list(decoded.values()))
                per_image = 1e3 * (time.perf_counter() - t) / len(decoded)
                for j, ((i, image), score, small) in enumerate(zip(decoded.items(), prediction.scores,
                                                                   prediction.maps)):
                    _finish(batch[i], image, float(score), small, per_image, threshold, writer)
                    if np.isfinite(score):
                        seen["scores"].append(float(score))
                        for name in STATS:
                            seen[name].append(float(prediction.stats[name][j]))
            rows += batch
            bar.update(len(batch))
    finally:
        bar.close()
        rows += [_row(p) | {"status": "skipped", "error": f"not an image file by its extension ({p.suffix or 'none'})"}
                 for p in inputs.skipped]
        run = PredictRun(rows, out, time.perf_counter() - t_start)
        if drift_level is not None:
            run.drift = check(threshold, np.asarray(seen["scores"]), {k: np.asarray(seen[k]) for k in STATS},
                              drift_level)
        write_table(run, detector, len(inputs.images))
    return run


def _one_line(exc: Exception, path: str) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if path in text else f"{path}: {text}"


def _finish(row: dict, image: np.ndarray, score: float, small: np.ndarray, per_image: float,
            threshold, writer: Writer) -> None:
    """Fill an image's row: score, verdict, its files."""
    row.update(score=score, time_ms=per_image)
    if not np.isfinite(score) or not np.isfinite(small).all():
        row.update(status="failed", error=f"{row['path']}: the model gave a non-finite score or map")
        return
    if threshold is not None:
        row.update(threshold=threshold.image, fpr=threshold.fpr,
                   verdict="anomalous" if score > threshold.image else "normal")
    t = time.perf_counter()
    try:
        writer.write(Path(row["path"]), image, small, row)
    except Exception as exc:
        row.update(status="failed", error=_one_line(exc, row["path"]), verdict=None)
    row["io_ms"] += 1e3 * (time.perf_counter() - t)


def write_table(run: PredictRun, detector: Detector, planned: int) -> None:
    import pandas as pd

    table = pd.DataFrame(run.rows, columns=list(COLUMNS))
    with atomic_path(run.out / f"{TABLE}.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(run.out / f"{TABLE}.csv") as tmp:
        table.to_csv(tmp, index=False)
    threshold = detector.threshold
    summary = {"model": str(detector.source), "backend": detector.backend.name, "device": str(detector.device),
               "batch_size": detector.batch_size, "category": detector.cfg.data.category,
               "image_size": detector.size, "precision": detector.backend.precision,
               "threshold": None if threshold is None else {
                   "image": threshold.image, "pixel": threshold.pixel, "fpr": threshold.fpr,
                   "pixel_fpr": threshold.pixel_fpr, "method": threshold.method, "n_normals": threshold.n_normals,
                   "delta": threshold.delta, "promise": threshold.promise(), "source": threshold.source,
                   "normals_from": threshold.normals_from, "excluded": threshold.excluded,
                   "describe": threshold.describe()},
               "planned": planned, "ok": run.count("ok"), "failed": run.count("failed"),
               "skipped": run.count("skipped"), "anomalous": run.anomalous, "wall_s": run.wall_s,
               "drift": None if run.drift is None else run.drift.to_dict()}
    with atomic_path(run.out / "run.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
