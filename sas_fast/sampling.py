"""Which mask areas one SaS iteration evaluates: all K - 2 inner areas, or a stratified sample.

The loss of docs/SPEC.md section 2.8 sums the score over the K - 2 inner areas ``a_k = k / (K - 1)``.
With ``area_samples = S`` (S divides K - 2) the inner areas are cut into S contiguous strata
of ``n = (K - 2) / S`` areas each, and every iteration evaluates one area of each stratum, at
offset ``j_s`` in stratum s. Whenever every ``j_s`` is uniform on ``0..n-1`` (each area drawn
with probability 1 / n), ``n * sum_{sampled} z_k`` is an unbiased estimate of ``sum_k z_k``;
every part of the trajectory is visited every iteration, and an iteration costs S / (K - 2) of
the full one in model image-passes. ``config.area_sampling`` says how the offsets are drawn
(docs/SPEC.md section 2.8); each choice keeps every ``j_s`` uniform, so each is unbiased:

- ``stratified``: every ``j_s`` independent and uniform, every iteration.
- ``antithetic``: strata s and S - 1 - s take reflected offsets ``j_{S-1-s} = n - 1 - j_s``, so
  the sampled areas come in pairs a, 1 - a (inner index k and K - 3 - k); a middle stratum
  (S odd) draws on its own. Scores at a and 1 - a move in opposite directions as the
  schedule shifts mass, so their sum varies less than two independent draws.
- ``balanced``: each stratum walks through a fresh random permutation of its n areas, one per
  iteration, so over every cycle of n iterations each area is evaluated exactly once (sampling
  without replacement across iterations: the accumulated gradient misses no area for long).
- ``balanced-antithetic``: both (the reflected strata reflect the permutation).
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
        self.balanced = config.area_sampling.startswith("balanced")
        self.antithetic = config.area_sampling.endswith("antithetic")
        self.generator = torch.Generator().manual_seed((config.seed + 1) % 2 ** 64)
        self.cycle = None            # S x n: the permutations of the current cycle (balanced)
        self.calls = 0

    @property
    def weight(self) -> int:
        """Areas each sampled area stands for: the loss estimate is ``weight * sum_sampled``."""
        return self.stratum

    def __call__(self) -> torch.Tensor:
        start = torch.arange(0, self.inner, self.stratum)
        if self.stratum == 1:
            return start
        offsets = self._offsets()
        if self.antithetic:
            s = self.samples
            mirror = torch.arange(s - 1, -1, -1)             # stratum S - 1 - s
            upper = torch.arange(s) > mirror                  # the second stratum of each pair
            offsets = torch.where(upper, self.stratum - 1 - offsets[mirror], offsets)
        return start + offsets

    def _offsets(self) -> torch.Tensor:
        """``[S]`` offsets ``j_s``, each uniform on ``0..n-1`` (independent, or the next column
        of this cycle's permutations)."""
        n = self.stratum
        if not self.balanced:
            return torch.randint(n, (self.samples,), generator=self.generator)
        step = self.calls % n
        if step == 0:
            self.cycle = torch.stack([torch.randperm(n, generator=self.generator) for _ in range(self.samples)])
        self.calls += 1
        return self.cycle[:, step]
