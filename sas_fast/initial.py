"""Where SaS's pre-mask starts: seeded N(0, 1) noise, optionally plus a one-pass attribution map.

``init="noise"`` (docs/SPEC.md section 2.1, proto): ``pm = sigma n``, ``n ~ N(0, 1)`` drawn from
``torch.Generator().manual_seed(seed)``, the same draw for every image, ``sigma = noise_scale``
(proto: 1). The schedule's order among pixels whose gradient is weak or noisy stays the start's
until Adam's steps (about ``lr`` each) outweigh ``sigma``; a smaller ``sigma`` hands that order to
the gradient sooner.

``init="gradient"`` / ``"guided_backprop"`` (ours): ``pm = sigma n + init_scale * G``. The map
``A = max_c |d z_target / d x_c|`` costs one model pass per image (forward + input-gradient
backward; Guided BP: the same pass with the guided rule of :mod:`sas_fast.guided`). Its pixel ranks
are mapped to standard-normal quantiles, ``G_i = Phi^-1((rank_i + 1/2) / (H W))`` (ties by pixel
index), and reflect-padded by ``r = window // 2`` to the pre-mask's size. So ``G`` is N(0, 1)-shaped
whatever the map's scale, and ``init_scale`` says how far above the noise it starts. The schedule
``SoftMaxPool(Gauss(pm))`` then starts near the map's ranking at the window's scale, and the
optimisation refines it instead of finding it. Each image's ``G`` depends on that image only, and
``n`` on the seed only, so an image's start does not depend on its batch-mates.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .config import SaSConfig
from .guided import GuidedActivations
from .step import Objective


def gaussian_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``B x H x W`` -> the standard-normal quantiles of each map's pixel ranks (ties by index)."""
    b, h, w = maps.shape
    flat = maps.reshape(b, -1)
    order = torch.sort(flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=maps.device).expand(b, -1))
    quantiles = (ranks.to(torch.float64) + 0.5) / (h * w)
    return torch.special.ndtri(quantiles).reshape(b, h, w)


def init_map(objective: Objective, images: torch.Tensor, method: str, bf16: bool) -> torch.Tensor:
    """``max_c |d z_target / d x_c|`` of every image (``B x H x W``), plain or guided: one pass each."""
    x = images.detach().clone().requires_grad_(True)
    rows = torch.arange(images.shape[0], device=images.device)
    guide = GuidedActivations() if method == "guided_backprop" else contextlib.nullcontext()
    with torch.enable_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16), guide:
        scores = objective.scores(x, rows).float()
    grad = torch.autograd.grad(scores.sum(), x, allow_unused=True)[0] if scores.requires_grad else None
    if grad is None:                              # the scores ignore the input: a zero map
        return torch.zeros_like(images[:, 0], dtype=torch.float32)
    return grad.abs().amax(1)


def initial_premask(noise: torch.Tensor, objective: Objective, images: torch.Tensor,
                    config: SaSConfig) -> torch.Tensor:
    """The starting pre-mask ``B x 1 x (H + 2r) x (W + 2r)`` (a new leaf that requires grad) from
    ``noise`` (``1 x 1 x (H + 2r) x (W + 2r)``, N(0, 1)), ``config.noise_scale`` and ``config.init`` /
    ``init_scale``."""
    b = images.shape[0]
    premask = config.noise_scale * noise.expand(b, -1, -1, -1).to(
        images.device, torch.float64 if images.dtype == torch.float64 else torch.float32)
    if config.init != "noise":
        r = config.window // 2
        shape = gaussian_ranks(init_map(objective, images, config.init, config.precision == "bf16"))
        shape = F.pad(shape[:, None], (r, r, r, r), mode="reflect") if r else shape[:, None]
        premask = premask + config.init_scale * shape.to(premask)
    if not bool(torch.isfinite(premask).all()):
        raise ValueError(f"the starting pre-mask is not finite: init_scale={config.init_scale!r} is too large")
    return premask.clone().requires_grad_(True)
