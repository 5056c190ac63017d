"""What a GPU machine without internet needs to run ``bench/gpu.py``, in one folder that travels with the tree.

    .venv/bin/python bench/gpu_carry.py [--out .gpu_carry] [--data-root ../shared/data] [--train 210]

The device image (``IMAGE_PACKAGES``: Python 3.12, torch 2.11 with CUDA, timm, pandas, pyarrow, onnx, onnxruntime,
scipy, OpenCV, ...) lacks Ray, Optuna and FrEIA. This writes, under ``--out`` (ignored by git):

- ``wheels.tar.xz``: cp312 manylinux x86_64 wheels of ``ray[tune]``, ``optuna`` and ``FrEIA`` at the versions of
  ``requirements/lock.txt``, and of every package they need that the image does not hold (their ``Requires-Dist``
  followed, markers evaluated for Linux x86_64 and ``--python``). FrEIA 0.2 ships only an sdist: its pure-Python
  wheel is built here. Ray's wheel loses ``ray/jars/`` (31 MiB of Java workers) and the dashboard's source maps,
  its ``RECORD`` rewritten to match. The tree that travels is limited to 64 MiB, so every wheel is rewritten
  uncompressed (``ZIP_STORED``, the plainest zip there is) and all of them go into one solid xz archive: Ray's
  thousands of small files compress together (Ray: 75 MiB as published, 23 MiB here).
- ``weights/``: the default backbone's ImageNet weights from ssnf's cache (``ssnf weights fetch``), xz-compressed;
  ``bench/gpu.py --carry`` unpacks them into a cache of its own (ssnf checks their sha256 when it loads them).
- ``data/tire/``: tire in the MVTec layout, decoded and resized by ssnf's own ``load_pair`` to 256 px and stored
  lossless (images WebP, masks PNG): at ``data.image_size=256`` (the default) training reads exactly the pixels
  it reads from the originals (PIL's resize to the same size is a copy). ``--train`` and ``--test`` choose how many.
- ``manifest.json``: every file, its bytes, the versions, the total beside the tracked tree's bytes.

Then, on the device machine: ``docs/benchmarks.md`` ("GPU (issue 31)") gives the command that installs the wheels
offline and runs ``bench/gpu.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ROOTS = ("ray[tune]", "optuna", "FrEIA")  # what tune_main.py and ssnf.model.flow import that the image lacks
LIMIT_MIB = 64.0  # the working tree that travels to the device machine, carried folders included
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
DROP = ("ray/jars/", ".js.map")  # not needed to run: Ray's Java workers, the dashboard's source maps
WEIGHTS = "mobilenetv2_100"  # the default backbone (BackboneConfig.name)
# The device image's Python packages, as this workplace listed them on 2026-11-17 (the device docs, KINDS.md:
# "Python packages already there"); a package named here is not carried (carrying one would shadow the image's).
IMAGE_PACKAGES = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp""".split())


def lock_pins(path: Path = REPO / "requirements" / "lock.txt") -> dict[str, str]:
    """``{canonical name: version}`` of the lock's ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if "==" in spec and not spec.startswith("-"):
            name, version = spec.split("==", 1)
            pins[canonicalize_name(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def fetch(name: str, version: str, python: str, dest: Path) -> Path:
    """The wheel of ``name==version`` for ``python`` on Linux x86_64 in ``dest``: downloaded, or built from the
    sdist where PyPI has no wheel (a pure-Python package such as FrEIA 0.2)."""
    pip = [sys.executable, "-m", "pip"]
    before = set(dest.iterdir())
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    got = subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
                          "--implementation", "cp", *platforms, "-d", str(dest), f"{name}=={version}"],
                         capture_output=True, text=True)
    if got.returncode != 0:
        got = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), f"{name}=={version}"],
                             capture_output=True, text=True)
        if got.returncode != 0:
            raise SystemExit(f"gpu_carry: no wheel of {name}=={version} for Python {python}: "
                             f"{(got.stderr.strip().splitlines() or ['pip failed'])[-1]}")
    new = [p for p in set(dest.iterdir()) - before if p.suffix == ".whl"]
    if len(new) != 1:
        raise SystemExit(f"gpu_carry: expected one wheel of {name}=={version}, pip left {sorted(p.name for p in new)}")
    built = new[0]
    if "-none-any" not in built.name and f"cp{python.replace('.', '')}" not in built.name and "abi3" not in built.name:
        raise SystemExit(f"gpu_carry: {built.name} is not a wheel for CPython {python}")
    return built


def requirements(wheel: Path, extras: set[str], python: str) -> list[Requirement]:
    """The ``Requires-Dist`` of ``wheel`` that apply on Linux x86_64, CPython ``python``, with ``extras``."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
            out.append(req)
    return out


def resolve(pins: dict[str, str], python: str, dest: Path) -> tuple[list[Path], list[str]]:
    """The wheels of ``ROOTS`` and of what they need beyond ``IMAGE_PACKAGES``, at the lock's versions; and the
    image's packages they rely on (named in the manifest: the image must hold them)."""
    queue = [Requirement(r) for r in ROOTS]
    wheels: dict[str, Path] = {}
    extras_seen: dict[str, set[str]] = {}
    from_image: set[str] = set()
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in IMAGE_PACKAGES:
            from_image.add(name)
            continue
        if name in wheels and set(req.extras) <= extras_seen[name]:
            continue
        if name not in pins:
            raise SystemExit(f"gpu_carry: {req.name} is needed but not pinned in requirements/lock.txt")
        if name not in wheels:
            wheels[name] = fetch(name, pins[name], python, dest)
        extras_seen[name] = extras_seen.get(name, set()) | set(req.extras)
        queue += requirements(wheels[name], set(req.extras), python)
    return sorted(wheels.values()), sorted(from_image)


def repack(wheel: Path, out: Path, drop: tuple[str, ...] = DROP) -> Path:
    """``wheel`` rewritten into ``out`` uncompressed, without the members ``drop`` names (a folder prefix ending in
    ``/``, or a suffix), its ``RECORD`` without their lines (the kept members' hashes are unchanged)."""
    target = out / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as dst:
        dropped = {i.filename for i in src.infolist()
                   if any(i.filename.startswith(d) if d.endswith("/") else i.filename.endswith(d) for d in drop)}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if line.split(",")[0] not in dropped]
                data = ("\n".join(kept) + "\n").encode()
            stored = copy.copy(info)  # (the source's own entry keeps its method: zipfile reads by it)
            stored.compress_type = zipfile.ZIP_STORED
            dst.writestr(stored, data)
    return target


def bundle(wheels: list[Path], target: Path) -> Path:
    """``wheels`` in one solid xz archive (``python -m tarfile -e`` unpacks it where no xz is installed)."""
    with tarfile.open(target, "w:xz", preset=9) as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=wheel.name)
    return target


def carry_weights(out: Path) -> Path:
    """The default backbone's weights from ssnf's cache, xz-compressed into ``out``."""
    from ssnf.backbones.weights import cached_file

    found = cached_file(WEIGHTS)
    if found is None:
        raise SystemExit(f"gpu_carry: {WEIGHTS} weights are not in ssnf's cache: run `ssnf weights fetch {WEIGHTS}`")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{found[0].name}.xz"
    with open(found[0], "rb") as src, lzma.open(target, "wb", preset=9) as dst:
        shutil.copyfileobj(src, dst)
    return target


def carry_tire(src_root: Path, out_root: Path, train: int, test: int, size: int = 256) -> dict[str, int]:
    """tire in the MVTec layout under ``out_root``: the first ``train`` training images (0: all), every validation
    normal, the first ``test`` test images of each kind (good and each defect) with their masks; each image through
    ``load_pair`` at ``size`` (what training reads), stored lossless. Returns the counts per split."""
    import numpy as np
    from PIL import Image

    from ssnf.config import DataConfig
    from ssnf.data.dataset import load_pair
    from ssnf.data.layouts import load_index

    index = load_index(DataConfig(root=str(src_root), category="tire", layout="mvtec"))
    kinds: dict[str, list] = {}
    for sample in index.test:
        kinds.setdefault(sample.defect, []).append(sample)
    chosen = {"train/good": index.train[:train or None], "validation/good": index.validation,
              **{f"test/{kind}": samples[:test] for kind, samples in sorted(kinds.items())}}
    cat = out_root / "tire"
    shutil.rmtree(cat, ignore_errors=True)
    for folder, samples in chosen.items():
        (cat / folder).mkdir(parents=True)
        for sample in samples:
            image, mask = load_pair(sample, size)
            Image.fromarray(image).save(cat / folder / f"{sample.image.stem}.webp", lossless=True, quality=100, method=6)
            if sample.mask is not None:
                gt = cat / "ground_truth" / sample.defect
                gt.mkdir(parents=True, exist_ok=True)
                Image.fromarray((mask * 255).astype(np.uint8)).save(gt / f"{sample.image.stem}_mask.png", optimize=True)
    return {folder: len(samples) for folder, samples in chosen.items()}


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what travels besides the carried folder: tracked files, and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((repo / name.decode()).stat().st_size for name in listed if name and (repo / name.decode()).is_file())


def build(args: argparse.Namespace) -> dict:
    """Every part of the carry under ``args.out``; the manifest (also written there)."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-carry-") as tmp:
        (Path(tmp) / "stored").mkdir()
        downloaded, from_image = resolve(lock_pins(), args.python, Path(tmp))
        packed = {w.name: w.stat().st_size for w in (repack(w, Path(tmp) / "stored") for w in downloaded)}
        archive = bundle(sorted((Path(tmp) / "stored").iterdir()), out / "wheels.tar.xz")
    weights = carry_weights(out / "weights")
    if args.keep_data:  # the tire folder of an earlier build, as it is
        cat = out / "data" / "tire"
        counts = {str(d.relative_to(cat)): len(list(d.iterdir())) for d in sorted(cat.glob("*/*")) if "ground" not in str(d)}
    else:
        shutil.rmtree(out / "data", ignore_errors=True)
        counts = carry_tire(Path(args.data_root), out / "data", args.train, args.test) if args.data_root else {}
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    total, tree = sum(p.stat().st_size for p in files), tree_bytes()
    manifest = {
        "python": args.python, "wheels": packed, "wheels_xz_bytes": archive.stat().st_size, "from_image": from_image,
        "weights": {weights.name: weights.stat().st_size}, "tire": counts,
        "data_bytes": sum(p.stat().st_size for p in files if "data" in p.relative_to(out).parts[:1]),
        "carry_bytes": total, "tree_bytes": tree, "travels_mib": round((total + tree) / 2**20, 2), "limit_mib": LIMIT_MIB,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / ".gpu_carry"), help="the folder to write (default: .gpu_carry)")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                   help="where tire is ('' for no data: bench/gpu.py then generates demo data)")
    p.add_argument("--train", type=int, default=0, help="tire training images to carry (0: all 210)")
    p.add_argument("--test", type=int, default=2, help="tire test images of each kind (good, each defect)")
    p.add_argument("--keep-data", action="store_true", help="keep the tire folder an earlier build wrote")
    p.add_argument("--python", default="3.12", help="the device's Python (wheels for it)")
    args = p.parse_args(argv)
    if args.keep_data and not (Path(args.out) / "data" / "tire").is_dir():
        print(f"gpu_carry: --keep-data, but {args.out} holds no data/tire yet", file=sys.stderr)
        return 2
    if args.data_root and not args.keep_data and not (Path(args.data_root) / "tire").is_dir():
        print(f"gpu_carry: no tire under {args.data_root} (pass --data-root, or '' for demo data there)", file=sys.stderr)
        return 2
    manifest = build(args)
    mib = manifest["carry_bytes"] / 2**20
    print(f"{len(manifest['wheels'])} wheels, weights, tire {manifest['tire']}: {mib:.2f} MiB in {args.out}; "
          f"with the tree {manifest['travels_mib']:.2f} MiB of {LIMIT_MIB:g}")
    if manifest["travels_mib"] > LIMIT_MIB:
        print(f"gpu_carry: {manifest['travels_mib']:.2f} MiB would travel, over {LIMIT_MIB:g}: carry fewer images "
              "(--train, --test)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
