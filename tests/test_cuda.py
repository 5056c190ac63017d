"""The GPU path on a real CUDA device: a training step as on the CPU, bf16 autocast that keeps the couplings'
arithmetic float32, training end to end on the GPU, the detector and its exports with CUDA inputs, a fractional
trial's memory share. Marked ``cuda``; skipped where torch sees no CUDA device (every CI machine): ``bench/gpu.py``
runs them on a GPU machine.

Float32 comparisons run with TF32 off (``exact_float32``): with it, cuDNN's convolutions round their inputs to 10
mantissa bits and differ from the CPU by ~1e-3, which would hide a real placement or dtype error in the noise. Each
comparison is a norm-relative error, ``|got - ref| / |ref|``: float32 lands far under 1e-4 here, bf16 near 1e-2.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from ssnf.checkpoint import load_checkpoint
from ssnf.config import SSNFConfig, with_overrides
from ssnf.data.demo import DemoSpec, ensure_demo
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.export import example_images, export, float32_path
from ssnf.features import load_images, to_tensor
from ssnf.inference import Detector
from ssnf.model.detector import SSNFModel
from ssnf.model.flow import CouplingBlock, ScaleFlow
from ssnf.model.subnets import CouplingSubnet
from ssnf.synthesis.patches import synthetic_batch
from ssnf.synthesis.positions import anchor_positions, gate_positions
from ssnf.training import Batch, step_loss
from tests.helpers.tiny import train_tiny

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: these run on a GPU machine (bench/gpu.py runs them)")]

REPO = Path(__file__).resolve().parents[1]
FP32, BF16 = 1e-4, 2e-2  # norm-relative tolerances of a CUDA result against the CPU's (bf16 vs fp32 here: 5e-3)


def rel_error(got, ref) -> float:
    """``|got - ref| / |ref|`` over all elements, in float64 (tensors on any device, or arrays)."""
    got, ref = (t.detach().cpu().double() if torch.is_tensor(t) else torch.from_numpy(np.asarray(t, np.float64))
                for t in (got, ref))
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


@pytest.fixture(autouse=True, scope="module")
def exact_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def step_inputs(tmp_path_factory):
    """A tiny fp32 model (its couplings off the identity, its norms fitted) and one real training batch, made on the
    CPU: 4 demo washers, their synthetic anomalies, the gate's and the anchor's positions (the default loss)."""
    root = tmp_path_factory.mktemp("cuda-step")
    ensure_demo(root, ("washer",), DemoSpec(size=64, n_train=8, n_test_good=2, n_per_defect=1, seed=0))
    cfg = with_overrides(SSNFConfig(), data={"root": str(root), "category": "washer", "image_size": 64},
                         backbone={"pretrained": False}, train={"precision": "fp32"},
                         model={"hidden": 16, "couplings": 2, "heads": 2, "attn_kv_size": 4})
    images = load_images(make_splits(load_index(cfg.data), cfg.data).train[:4], 64)
    model = SSNFModel.build(cfg.backbone, cfg.model, seed=0).set_precision("fp32")
    torch.manual_seed(0)
    for flow in model.flows:
        for block in flow.blocks:
            torch.nn.init.normal_(block.subnet.out.weight, std=0.05)
    fakes, masks = synthetic_batch(images, np.arange(4), np.random.default_rng(0), cfg.synthesis)
    normal, synthetic = model.extractor(to_tensor(images)), model.extractor(to_tensor(fakes))
    model.fit_norms(normal)
    masks = torch.from_numpy(masks)[:, None]
    batch = Batch(normal, None, synthetic, masks, gate_positions(cfg.loss, masks, normal, synthetic),
                  anchor_positions(cfg.loss, normal, synthetic))
    assert batch.push is not None and batch.anchor is not None  # the default loss: gated mask form, anchored
    return cfg, model, batch, images


def on(batch: Batch, device: str) -> Batch:
    """``batch`` with every tensor on ``device``."""
    def move(tensors):
        return None if tensors is None else [t.to(device) for t in tensors]

    return Batch(move(batch.normal), move(batch.noise), move(batch.synthetic), batch.masks.to(device),
                 move(batch.push), move(batch.anchor))


def one_step(model: SSNFModel, batch: Batch, cfg: SSNFConfig) -> tuple[torch.Tensor, dict, dict]:
    model.zero_grad(set_to_none=True)
    loss, terms = step_loss(model, batch, cfg.loss, 0.5)
    loss.backward()
    grads = {name: p.grad.detach().cpu() for name, p in model.flows.named_parameters() if p.grad is not None}
    return loss.detach().cpu(), terms, grads


def test_a_training_step_on_cuda_matches_the_cpu(step_inputs):
    """Same model, same batch: the loss, its terms and every flow parameter's gradient agree to float32 rounding."""
    cfg, model, batch, images = step_inputs
    gpu = copy.deepcopy(model).cuda()
    loss, terms, grads = one_step(model, batch, cfg)
    gpu_loss, gpu_terms, gpu_grads = one_step(gpu, on(batch, "cuda"), cfg)
    assert rel_error(gpu_loss, loss) < 1e-5
    assert terms["synthetic"] != 0 and abs(gpu_terms["synthetic"] - terms["synthetic"]) < 1e-4 * abs(terms["synthetic"])
    assert len(grads) > 10 and set(gpu_grads) == set(grads)
    worst = max((rel_error(gpu_grads[k], g), k) for k, g in grads.items() if g.norm() > 0)
    assert worst[0] < FP32, worst
    # the frozen backbone on the GPU gives the CPU's features
    for got, ref in zip(gpu.extractor(to_tensor(images, "cuda")), batch.normal):
        assert got.device.type == "cuda" and rel_error(got, ref) < FP32


def dtypes(value) -> set:
    if torch.is_tensor(value):
        return {value.dtype}
    if isinstance(value, (tuple, list)):
        return set().union(*(dtypes(v) for v in value)) if value else set()
    return set()


def test_bf16_autocast_on_cuda_keeps_the_couplings_arithmetic_float32(step_inputs, monkeypatch):
    """train.precision=bf16 on a GPU: the subnets' convolutions run in bfloat16; what leaves a subnet, the couplings'
    affine (inputs and outputs), the log-determinants, the flows' outputs, the loss and the gradients are float32."""
    cfg, model, batch, _ = step_inputs
    gpu = copy.deepcopy(model).cuda().set_precision("bf16")
    seen: dict[str, set] = defaultdict(set)

    def record(name):
        def hook(module, inputs, output):
            seen[name] |= dtypes(output)
        return hook

    kinds = ((torch.nn.Conv2d, "subnet convolution"), (CouplingSubnet, "subnet"), (CouplingBlock, "coupling"),
             (ScaleFlow, "flow"))
    for module in gpu.flows.modules():
        for kind, name in kinds:
            if isinstance(module, kind):
                module.register_forward_hook(record(name))
    real_affine = CouplingBlock._affine

    def affine(self, x, a, rev=False):
        seen["affine inputs"] |= dtypes((x, a))
        out = real_affine(self, x, a, rev)
        seen["affine outputs"] |= dtypes(out)
        return out

    monkeypatch.setattr(CouplingBlock, "_affine", affine)
    loss, _, grads = one_step(gpu, on(batch, "cuda"), cfg)
    assert seen["subnet convolution"] == {torch.bfloat16}  # autocast did run
    for name in ("subnet", "affine inputs", "affine outputs", "coupling", "flow"):
        assert seen[name] == {torch.float32}, (name, seen[name])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert {g.dtype for g in grads.values()} == {torch.float32} and all(torch.isfinite(g).all() for g in grads.values())
    # the backbone under bf16: its arithmetic bfloat16, the features it hands over float32
    gpu.extractor.precision = "bf16"
    inner = []
    handle = next(m for m in gpu.extractor.body.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(
        lambda module, inputs, output: inner.append(output.dtype))
    features = gpu.extractor(torch.rand(2, 3, 64, 64, device="cuda"))
    handle.remove()
    assert inner == [torch.bfloat16] and {f.dtype for f in features} == {torch.float32}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny detector of ``tests/helpers/tiny.py``, trained here on the GPU (train.device=auto), bf16 (the
    default); the training features handed to the loop, as the loop got them."""
    import ssnf.training

    handed = []
    real = ssnf.training.resident

    def spy(tensors, device, *args, **kwargs):
        out = real(tensors, device, *args, **kwargs)
        handed.extend(t.device.type for t in out)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssnf.training, "resident", spy)
        cfg, path, result = train_tiny(tmp_path_factory.mktemp("cuda-trained"))
    return cfg, path, result, handed


def test_training_runs_on_the_gpu_and_saves_a_checkpoint_any_device_loads(trained):
    cfg, path, result, handed = trained
    assert cfg.train.device == "auto" and next(result.model.parameters()).device.type == "cuda"
    assert handed and set(handed) == {"cuda"}  # the cached training features stayed on the GPU for the run
    assert np.isfinite(result.final["loss"]) and 0.0 <= result.final["val_score"] <= 1.0
    assert set(result.model.thresholds) == {"bf16", "fp32"}
    assert next(load_checkpoint(path).model.parameters()).device.type == "cpu"


def test_the_detector_on_cuda_scores_and_decides_like_the_cpu(trained):
    """The checkpoint through ``Detector`` on each device: float32 to rounding, bf16 within bf16's error; the same
    verdicts at each precision's threshold (an image whose score lies within the tolerance of it aside)."""
    _, path, result, _ = trained
    files = [s.image for s in result.splits.test]
    for precision, tolerance in (("fp32", FP32), ("bf16", BF16)):
        got = {}
        for device in ("cpu", "cuda"):
            ckpt = load_checkpoint(path, device)
            cfg = with_overrides(ckpt.config, train={"precision": precision})
            detector = Detector.from_model(ckpt.model, cfg, device)
            assert detector.device.type == device and detector.backend.precision == precision
            got[device] = detector.predict_files(files)
        cpu, gpu = got["cpu"], got["cuda"]
        assert rel_error(gpu.maps, cpu.maps) < tolerance and rel_error(gpu.scores, cpu.scores) < tolerance
        cut = cpu.threshold.image
        clear = np.abs(cpu.scores - cut) > tolerance * np.abs(cpu.scores).max()
        assert clear.any() and (gpu.anomalous[clear] == cpu.anomalous[clear]).all()


def test_exports_of_a_cuda_detector_match_it_with_cuda_inputs(trained, tmp_path):
    """``ssnf export`` from a detector on the GPU (the file is traced on the CPU and checked there), its file
    against the GPU's float32 outputs; the same float32 path traced on the GPU with CUDA inputs (what bench/gpu.py
    times) against the CPU path, at the traced size and another one."""
    _, path, _, _ = trained
    detector = Detector.load(path, device="cuda")
    file = export(detector, tmp_path / "model.torchscript", "torchscript")
    images = example_images(64, 4, seed=3)
    ckpt = load_checkpoint(path, "cuda")
    reference = Detector.from_model(ckpt.model, with_overrides(ckpt.config, train={"precision": "fp32"}), "cuda")
    exported, on_gpu = Detector.load(file).predict(images), reference.predict(images)
    assert rel_error(exported.maps, on_gpu.maps) < FP32 and rel_error(exported.scores, on_gpu.scores) < FP32
    cpu_path = float32_path(detector)
    example = torch.from_numpy(images)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes read as constants (ssnf.export silences them too)
        traced = torch.jit.trace(copy.deepcopy(cpu_path).cuda(), example.cuda(), check_trace=False)
        for batch in (example, torch.from_numpy(example_images(88, 2, seed=5))):
            (ref_scores, ref_maps), (scores, maps) = cpu_path(batch), traced(batch.cuda())
            assert maps.device.type == "cuda" and maps.shape == ref_maps.shape
            assert rel_error(maps, ref_maps) < FP32 and rel_error(scores, ref_scores) < FP32


def test_onnx_runtime_s_cuda_provider_matches_the_float32_path(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no CUDA provider ({', '.join(ort.get_available_providers())}): "
                    "onnxruntime-gpu runs it")
    _, path, _, _ = trained
    detector = Detector.load(path, device="cuda")
    file = export(detector, tmp_path / "model.onnx", "onnx")
    on_gpu = Detector.load(file, device="cuda")
    assert on_gpu.backend.session.get_providers()[0] == "CUDAExecutionProvider"
    images = example_images(64, 4, seed=6)
    with torch.no_grad():
        ref_scores, ref_maps = float32_path(detector)(torch.from_numpy(images))
    got = on_gpu.predict(images)
    assert rel_error(got.maps, ref_maps) < FP32 and rel_error(got.scores, ref_scores) < FP32


def test_a_quarter_gpu_trial_cannot_take_more_than_a_quarter_of_the_card():
    """``--gpus-per-trial 0.25``: the trial's allocator grants 15 % of the card, refuses 15 % more, and the refusal is
    what ends a trial as out of memory (in its own process: the cap is process-wide)."""
    pytest.importorskip("ray")  # ssnf.tune (the tune extra)
    code = ("import torch\n"
            "from ssnf.tune.trainable import _out_of_memory, gpu_memory_share\n"
            "gpu_memory_share(0.25)\n"
            "total = torch.cuda.get_device_properties(0).total_memory\n"
            "kept = torch.empty(int(0.15 * total), dtype=torch.uint8, device='cuda')\n"
            "try:\n"
            "    more = torch.empty(int(0.15 * total), dtype=torch.uint8, device='cuda')\n"
            "except RuntimeError as exc:\n"
            "    print('refused', _out_of_memory(exc))\n"
            "else:\n"
            "    print('granted')\n")
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["refused", "True"]
