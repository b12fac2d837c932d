"""Guided Backpropagation's rule as a context: inside ``GuidedActivations()`` every ReLU-like
activation of a forward pass passes back only positive gradients (Springenberg et al., 2015).

For ``y = clamp(x, lo, hi)`` (ReLU: ``lo = 0``, no ``hi``; ReLU6: ``0, 6``) the guided backward is
``dL/dx = [lo < x < hi] * max(dL/dy, 0)``: the ordinary derivative of the clip times the positive
part of the incoming gradient. It is applied by intercepting the calls (a ``TorchFunctionMode``),
not by module hooks, so functional activations and a module called several times are all guided.
Used by :func:`sas_fast.baselines.guided_backprop` and by SaS's ``init="guided_backprop"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _GuidedClip(torch.autograd.Function):
    """``clamp(x, lo, hi)`` (ReLU: ``hi = None``) whose backward passes only positive gradients:
    ``d/dx = [lo < x < hi] * max(grad, 0)`` (Springenberg et al.'s guided rule)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        inside = (x > ctx.lo) if ctx.hi is None else (x > ctx.lo) & (x < ctx.hi)
        return grad.clamp(min=0) * inside, None, None


class GuidedActivations(TorchFunctionMode):
    """Routes every ReLU-like call of a forward pass through :class:`_GuidedClip`: ``nn.ReLU``,
    ``nn.ReLU6`` (also a module called several times), ``F.relu`` / ``relu6``, ``torch.relu``,
    ``Tensor.relu`` and ``F.hardtanh`` with ``min_val = 0``; in-place variants return a new
    tensor. ``calls`` counts the activations guided."""

    RELU = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else kwargs.get("input")
        bounds = None
        if func in self.RELU:
            bounds = (0.0, None)
        elif func is F.relu6:
            bounds = (0.0, 6.0)
        elif func is F.hardtanh:
            lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
            bounds = (float(lo), float(hi)) if lo == 0 else None
        if bounds is None or not isinstance(x, torch.Tensor):
            return func(*args, **kwargs)
        self.calls += 1
        return _GuidedClip.apply(x, *bounds)
