"""``sas_fast.SaS``: SaS as a Captum attribution object, ``SaS(model, **config).attribute(inputs, target)``.

With Captum installed (the ``eval`` extra) ``SaS`` is a ``captum.attr.PerturbationAttribution``
(SaS ranks pixels by the effect of hiding and revealing them, as Captum's Occlusion does), so
Captum's wrappers (``NoiseTunnel``) and ``captum.attr.visualization`` take it; without Captum
it is the same object without that base class. The class is built on first use of the name
(module ``__getattr__``), so ``import sas_fast`` never imports Captum.
"""
from __future__ import annotations

import torch
from torch import nn

from .attribute import run_sas
from .config import make_config


class _SaS:
    """Saliency as a Schedule as a Captum attribution: ``SaS(model, **config).attribute(inputs, target)``.

    ``config``: ``preset=`` and any :class:`sas_fast.config.SaSConfig` field, plus ``layer=``
    for feature saliency. ``attribute`` returns ``B x 1 x H x W`` (Captum's layout for a
    single-channel attribution), float32 in [0, 1]. A ``captum.attr.PerturbationAttribution``
    when Captum is installed.
    """

    def __init__(self, model: nn.Module, preset: str = "default", layer=None, **config):
        self.forward_func, self.layer = model, layer       # forward_func: what Captum's Attribution holds
        self.config = make_config(preset, **config)

    @property
    def model(self) -> nn.Module:
        """The explained classifier (Captum's ``forward_func``)."""
        return self.forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        """True, as for Captum's perturbation attributions: the map ranks pixels by the effect of
        hiding and revealing them (a global attribution), not by a local gradient."""
        return True

    def has_convergence_delta(self) -> bool:
        """False: SaS has no completeness property to report an approximation error of."""
        return False

    @classmethod
    def get_name(cls) -> str:
        """``"SaS"`` (Captum's default would split the capitals: "Sa S")."""
        return "SaS"

    def attribute(self, inputs: torch.Tensor, target=None, additional_forward_args=None,
                  return_trace: bool = False, progress: bool | None = None,
                  max_seconds: float | None = None):
        r"""Saliency as a Schedule of ``inputs``: a learned priority order over the pixels,
        ``B x 1 x H x W`` in [0, 1] (1 = revealed first, most important).

        Algorithm (docs/SPEC.md sections 2-4; paper eqs. 2-8). The optimised variable is a pre-mask
        ``pm`` ``B x 1 x (H+2r) x (W+2r)``, ``r = ws // 2``, drawn N(0, 1) from ``seed``
        (the same draw for every image). Each of ``iterations`` Adam steps (lr ``lr``) computes::

            S     = SoftMaxPool_beta(Gauss_ws(pm))            schedule, B x 1 x H x W (SPEC 2.2-2.3)
            a_k   = k / (K - 1),  k = 1 .. K-2                areas; OFF and ON are constant (2.4)
            t_k   : mean_i sigmoid(s (S_i - t_k))^2 = a_k     thresholds, B x K' (SPEC 2.5)
            m_k   = sigmoid(s (S - t_k))                      masks, never stored (SPEC 2.6)
            x_k^I = Mask(x, m_k),  x_k^D = Mask(x, 1 - m_k)   blur-pyramid images (SPEC 2.7)
            L     = - sum_k z(x_k^I) + sum_k z(x_k^D)         z = f(.)[target] (eq. 7, SPEC 2.8)

        and back-propagates ``dL / d pm`` through the masks, the thresholds (implicitly,
        SPEC 3) and the schedule. ``mode="insertion"`` / ``"deletion"`` keeps one sum; with
        ``layer`` the score is ``z(x) = || f^l(x_clean) - f^l(x) ||^2`` with the signs swapped
        (eq. 9). The output is ``S`` min-max normalised per image (eq. 8, SPEC 4). One step
        costs ``B x M x K'`` model passes (``M`` modes, ``K' = K - 2`` areas, or
        ``area_samples``); ``trace.passes`` counts them.

        Args:
            inputs (Tensor): ``B x C x H x W`` floating point, finite, normalised the way the
                model expects, on the model's device; any ``H, W >= window`` (``window`` is
                odd, by default scaled from 41 at 224 px: 5 at 32 px, 3 at 16 px). Float64
                inputs get float64 masks, others float32.
            target (int, list, Tensor or None, optional): the explained class, an index in
                ``[0, classes)``: an int for every image, a list of ``B`` ints, a LongTensor
                ``[B]`` (or ``[1]``); ``None`` (default): the model's top-1 class on the clean
                image. Ignored for feature saliency (``layer`` given to :class:`SaS`).
            additional_forward_args (Any, optional): extra positional arguments of the
                model's forward, after the images: one object or a tuple / list; tensors whose
                first dimension is ``B`` are indexed per masked image. Default: None.
            return_trace (bool, optional): also return a :class:`SaSTrace` with every mask's
                score at the recorded iterations (paper figure 3). Default: False.
            progress (bool or None, optional): show a progress bar; None (default): only on a
                terminal.
            max_seconds (float or None, optional): wall-clock budget of the call; iterations
                that would end after it are not started (see :func:`sas_fast.attribute`).
                Default: None.

        The model, ``preset``, ``layer`` and the :class:`sas_fast.config.SaSConfig` fields
        (``mode`` in ``"insertion" | "deletion" | "both"``, ``num_masks`` K >= 3,
        ``iterations`` >= 1, ``backend`` in ``"auto" | "reference" | "triton" | "cpp"``,
        ``precision`` in ``"auto" | "fp32" | "bf16"``, ...) are the constructor's. A bad
        value raises ``ValueError`` naming the argument and what is allowed, before any work.

        Returns:
            *Tensor* or (*Tensor*, *SaSTrace*): **attributions** ``B x 1 x H x W`` float32 in
            [0, 1] on the inputs' device (Captum's layout of a one-channel attribution); with
            ``return_trace`` the tuple ``(attributions, trace)``, ``trace.scores[mode]``
            ``T x B x K`` and ``trace.passes`` ``[B]``.

        Example::

            >>> import torch, sas_fast
            >>> conv = torch.nn.Conv2d(3, 10, 3, padding=1)     # a 10-class toy classifier
            >>> model = torch.nn.Sequential(conv, torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
            >>> images = torch.rand(2, 3, 16, 16)               # B x C x H x W
            >>> sas = sas_fast.SaS(model.eval(), iterations=5, num_masks=6)
            >>> attr, trace = sas.attribute(images, target=torch.tensor([3, 7]), return_trace=True)
            >>> attr.shape
            torch.Size([2, 1, 16, 16])
            >>> float(attr.amin()), float(attr.amax())
            (0.0, 1.0)
            >>> trace.passes                                # 5 iterations x 2 areas x 2 modes
            tensor([20, 20])
        """
        out = run_sas(self.forward_func, inputs, target, layer=self.layer, config=self.config,
                      return_trace=return_trace, progress=progress,
                      additional_forward_args=additional_forward_args, max_seconds=max_seconds)
        if return_trace:
            return out[0].unsqueeze(1), out[1]
        return out.unsqueeze(1)


def _build_sas() -> type:
    """``SaS``: :class:`_SaS` on ``captum.attr.PerturbationAttribution`` with ``attribute`` wrapped
    as Captum wraps its own (``captum.log.log_usage``, which keeps ``attribute.__wrapped__``,
    called by ``NoiseTunnel``), or :class:`_SaS` alone without Captum."""
    try:
        from captum.attr import PerturbationAttribution
        from captum.log import log_usage
    except ImportError:
        bases, methods = (_SaS,), {}
    else:
        bases, methods = (_SaS, PerturbationAttribution), {"attribute": log_usage()(_SaS.attribute)}
    return type("SaS", bases, {"__module__": __name__, "__doc__": _SaS.__doc__, **methods})


def __getattr__(name: str):
    if name == "SaS":
        globals()["SaS"] = sas = _build_sas()
        return sas
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
