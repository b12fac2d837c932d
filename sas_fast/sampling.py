"""Which mask areas one SaS iteration evaluates: all K - 2 inner areas, or a stratified sample.

The loss of docs/SPEC.md section 2.8 sums the score over the K - 2 inner areas ``a_k = k / (K - 1)``.
With ``area_samples = S`` (S divides K - 2) the inner areas are cut into S contiguous strata
of ``n = (K - 2) / S`` areas each, and every iteration evaluates one area drawn uniformly from
each stratum. Then ``n * sum_{sampled} z_k`` is an unbiased estimate of ``sum_k z_k`` (each
area is drawn with probability 1 / n), every part of the trajectory is visited every
iteration, and an iteration costs S / (K - 2) of the full one in model image-passes.
"""
from __future__ import annotations

import torch

from .config import SaSConfig


class AreaSampler:
    """``sampler()`` -> LongTensor[S]: indices into the K - 2 inner areas for the next iteration.

    Seeded by ``config.seed`` (a CPU generator of its own, so the pre-mask init and the area
    draws are independent of the global RNG and of the batch). Without ``area_samples`` it
    returns all K - 2 indices every time.
    """

    def __init__(self, config: SaSConfig):
        self.inner = config.num_masks - 2
        self.samples = config.area_samples or self.inner
        self.stratum = self.inner // self.samples
        self.generator = torch.Generator().manual_seed((config.seed + 1) % 2 ** 64)

    @property
    def weight(self) -> int:
        """Areas each sampled area stands for: the loss estimate is ``weight * sum_sampled``."""
        return self.stratum

    def __call__(self) -> torch.Tensor:
        start = torch.arange(0, self.inner, self.stratum)
        if self.stratum == 1:
            return start
        return start + torch.randint(self.stratum, (self.samples,), generator=self.generator)
