"""Whether a SaS run fits in memory, checked before anything is allocated.

A run holds the blur pyramid (``B x levels x C x H x W``) for its whole length, and each step
the masked images of every evaluated area and mode (``B x M x K' x C x H x W``, with their input
gradient: twice that; ``K' = num_masks - 2``, or ``area_samples``) and the soft masks behind them
(``B x K' x H x W``, with gradient). :func:`check_fits` compares the sum with the memory the
images' device has available and raises a ``ValueError`` naming the setting that takes the most,
so ``levels=10**6`` or ``num_masks=10**6`` is refused before a single buffer is made. The
model's own activations are not counted (they depend on the model and on ``max_batch``).
"""
from __future__ import annotations

import os

import torch

from .config import SaSConfig
from .step import mode_names


def available_bytes(device: torch.device) -> int | None:
    """Bytes that may still be allocated on ``device``: CUDA free memory plus what PyTorch's
    allocator holds unused; on a CPU ``MemAvailable`` of ``/proc/meminfo`` (else the free physical
    pages); None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def run_bytes(config: SaSConfig, shape: tuple, element_size: int) -> dict:
    """Bytes a run on images of ``shape`` (``B x C x H x W``, masks of ``element_size`` bytes)
    holds, by the setting that sizes them: ``{"levels": pyramid, "num_masks": masked images and
    masks of one step}`` (``"area_samples"`` instead of ``"num_masks"`` when set)."""
    b, c, h, w = shape
    areas = config.area_samples or config.num_masks - 2
    masked = b * len(mode_names(config.mode)) * areas * c * h * w * 2 + b * areas * h * w * 2
    return {"levels": b * config.levels * c * h * w * element_size,
            "area_samples" if config.area_samples else "num_masks": masked * element_size}


def check_fits(config: SaSConfig, images: torch.Tensor, element_size: int) -> None:
    """Raise ``ValueError`` if the run's buffers (:func:`run_bytes`) exceed the memory available
    on the images' device, naming the largest setting and its value."""
    need = run_bytes(config, tuple(images.shape), element_size)
    have = available_bytes(images.device)
    if have is None or sum(need.values()) <= have:
        return
    name = max(need, key=need.get)
    raise ValueError(f"{name}={getattr(config, name)} needs {need[name] / 2 ** 30:.3g} GiB for "
                     f"{'the blur pyramid' if name == 'levels' else 'the masked images of one step'} "
                     f"({sum(need.values()) / 2 ** 30:.3g} GiB in all) but {images.device.type} has "
                     f"{have / 2 ** 30:.3g} GiB available: lower {name} or use fewer images per call")
