"""Where tensors run: host batches onto a device, clocks that wait for it, the CUDA settings the library uses.

Every host -> device copy of a batch goes through ``to_device``: on a CUDA device the host tensor is staged in
page-locked (pinned) memory and copied without blocking the host, so that the host's next work (synthesis, the
next batch's decoding) overlaps the copy; elsewhere it is a plain ``.to``. ``resident`` keeps a small fixed set
of tensors (a run's cached training features) on the GPU for the whole run instead of copying them every step.
``synchronize`` waits for a device's queued work: a host clock read after it times the work, not its launch.
``configure`` turns on cuDNN's autotuner (the library's shapes are fixed: one image size, one batch size).
``cuda_memory`` reads the process's peak GPU memory. On a CPU every one of them is the identity or nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch

RESIDENT_SHARE = 0.25  # of the GPU's free memory: the most that ``resident`` keeps on it


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor bound for a CUDA device goes through pinned memory, non-blocking
    (the copy is ordered before any later work on the device's stream; the pinned buffer is not reused before it
    ends: torch's caching host allocator records the copy)."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def resident(tensors: Sequence[torch.Tensor], device: torch.device | str,
             share: float = RESIDENT_SHARE) -> list[torch.Tensor]:
    """``tensors`` moved to a CUDA ``device`` once, where together they take at most ``share`` of its free memory;
    otherwise (a CPU, or too large) as they are: their batches are then copied with ``to_device``."""
    device = torch.device(device)
    if device.type != "cuda":
        return list(tensors)
    size = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    if size > share * free:
        return list(tensors)
    return [to_device(t, device) for t in tensors]


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has run everything queued on it (nothing to wait for on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure(device: torch.device | str) -> None:
    """On a CUDA device, cuDNN's autotuner picks each convolution's fastest algorithm for its shape once (a
    process-wide setting; the library's shapes repeat: one image size, one batch size per loop)."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def cuda_memory(device: torch.device | str) -> dict[str, int]:
    """This process's peak GPU memory on ``device`` since the last ``reset_peak_memory_stats``: ``gpu_peak_bytes``
    (allocated by tensors) and ``gpu_reserved_bytes`` (held by torch's caching allocator); {} on a CPU."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return {}
    return {"gpu_peak_bytes": int(torch.cuda.max_memory_allocated(device)),
            "gpu_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}


__all__ = ["RESIDENT_SHARE", "configure", "cuda_memory", "resident", "synchronize", "to_device"]
