"""A control variate for the sampled areas (SAGA over the inner areas, ``config.control_variate``).

With ``area_samples = S`` an iteration sees the schedule gradients ``g_k`` of S inner areas, one
drawn uniformly from each stratum of n = (K - 2) / S areas (:mod:`sas_fast.sampling`), and the
plain update is ``sum_s g_{k_s}``, whose expectation is ``(1 / n) sum_k g_k``. SAGA (Defazio,
Bach & Lacoste-Julien, 2014) keeps a table ``T_k``: the gradient of area k when it was last
evaluated (zero before), and updates with

    G = sum_s (g_{k_s} - T_{k_s}) + (1 / n) sum_k T_k,      then T_{k_s} <- g_{k_s}.

Unbiased for any table built from earlier iterations when the draws are independent of them:
``E[g_{k_s} - T_{k_s}] = (1 / n) sum_{k in s} (g_k - T_k)``, so ``E[G] = (1 / n) sum_k g_k``,
the plain update's expectation (``stratified`` draws; the balanced and antithetic draws of
:mod:`sas_fast.sampling` correlate the draw with the table's ages, so they are refused). The
variance falls as the table approaches the current gradients: with ``T_k = g_k`` for all k,
``G`` is the full gradient over n whatever the draw. The table lives on the schedule
(``B x 1 x H x W`` per area, before the soft-max pool), so the stale part is pushed back
through the current pool: memory ``(K - 2) x`` one schedule per explained image.
"""
from __future__ import annotations

import torch


class AreaGradientTable:
    """``table(index, grads) -> G``: the SAGA update for the areas ``index`` ``[S]`` (into the
    K - 2 inner areas) whose schedule gradients this iteration are ``grads`` ``S x B x 1 x H x W``;
    stores ``grads`` as those areas' entries."""

    def __init__(self, inner: int, stratum: int):
        self.inner, self.stratum = inner, stratum
        self.table = None                       # (K - 2) x B x 1 x H x W, zero until seen

    def __call__(self, index: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            self.table = grads.new_zeros((self.inner, *grads.shape[1:]))
        index = index.to(grads.device)
        update = (grads - self.table[index]).sum(0) + self.table.sum(0) / self.stratum
        self.table[index] = grads
        return update
