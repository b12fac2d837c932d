"""Every SaS hyperparameter, with its default and where the default comes from.

Sources: (paper) Singh & Namboodiri, ICIP 2024; (proto) the authors' public prototype
code; (ours) a decision of this project, see ``benchmarks/RESULTS.md`` for the studies.
Size-dependent values (``window``, ``max_blur``) are ``None`` = scaled from the 224-px
defaults by ``min(H, W) / 224`` at call time (:meth:`SaSConfig.resolved`).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import math
from dataclasses import dataclass, field

MODES = ("insertion", "deletion", "both")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class SaSConfig:
    """Hyperparameters of one SaS run (SPEC sections 2-4)."""

    mode: str = "both"            # loss, paper eq. 7: insertion | deletion | both (paper: both)
    num_masks: int = 20           # K masks, areas k / (K - 1), k = 0..K-1 (paper: 20; proto: OFF..ON)
    iterations: int = 200         # optimisation steps (paper: 200 at 32 px, 800 on ImageNet)
    lr: float = 0.05              # Adam learning rate on the pre-mask (ours; proto used SGD, lr unpublished)
    window: int | None = None     # smoothing / soft-max-pool window ws, odd (proto: 41 at 224 px)
    beta: float = 1.0             # soft-max-pool inverse temperature (proto)
    sharpness: float = 20.0       # s in m = sigmoid(s (schedule - t)) (proto)
    levels: int = 8               # blur-pyramid levels L (proto, from Extremal Perturbations)
    max_blur: float | None = None # sigma of the most blurred level (proto: 20 at 224 px)
    implicit_grad: bool = True    # differentiate through the thresholds (proto; SPEC section 3)
    threshold_tol: float = 1e-4   # stop the LM solve at max |area residual| < tol (proto)
    threshold_max_iter: int = 50  # LM iteration cap (ours)
    seed: int = 0                 # pre-mask init N(0, 1) from torch.Generator(seed) (proto)
    max_batch: int | None = None  # at most this many masked images per model call (None: all at once on
                                  # a GPU, about 4 MiB of them on a CPU: ours, sas_fast/cpu_memory.py)
    backend: str = "auto"         # ops backend: auto | reference | triton | cpp
    precision: str = "auto"       # model precision: auto | fp32 | bf16 (autocast + channels-last; masks stay
                                  # fp32); auto: bf16 where the device computes it natively (ours, precision.py)
    cuda_graph: bool = False      # replay each iteration from one CUDA graph (CUDA + triton backend only)
    trace_iterations: tuple = field(default=())  # iterations whose mask scores are recorded (return_trace)

    def resolved(self, height: int, width: int) -> "SaSConfig":
        """This config with ``window`` and ``max_blur`` filled in for an ``height x width`` image.

        ``window``: the odd integer nearest to 41 min(H, W) / 224, halves up (41 at 224 px, 5 at
        32 px), at least 3; calibrated in ``benchmarks/RESULTS.md`` (window 5 against 7 at 32 px).
        ``max_blur``: ``20 min(H, W) / 224`` (20 at 224 px, 2.86 at 32 px).
        """
        size = min(height, width)
        window = self.window
        if window is None:
            window = max(3, 2 * math.floor((41 * size / 224 - 1) / 2 + 0.5) + 1)
        max_blur = self.max_blur if self.max_blur is not None else 20.0 * size / 224
        return dataclasses.replace(self, window=window, max_blur=max_blur)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.num_masks < 3:
            raise ValueError(f"num_masks must be >= 3 (the fully-OFF and fully-ON masks are constant, "
                             f"so at least one mask in between is needed), got {self.num_masks}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.window is not None and (self.window < 1 or self.window % 2 == 0):
            raise ValueError(f"window must be a positive odd integer, got {self.window}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {self.max_batch}")
        for name in ("lr", "beta", "sharpness", "threshold_tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.levels < 2:
            raise ValueError(f"levels must be >= 2, got {self.levels}")


PRESETS = {
    "default": SaSConfig(),
    "paper-cifar": SaSConfig(iterations=200),       # paper section 4: MNIST, CIFAR-10/100
    "paper-imagenet": SaSConfig(iterations=800),    # paper section 4: ImageNet
}


def make_config(preset: str | SaSConfig = "default", **overrides) -> SaSConfig:
    """A :class:`SaSConfig` from a preset name (or config) with keyword overrides."""
    if isinstance(preset, SaSConfig):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(SaSConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown SaS option(s) {unknown}; known: {sorted(names)}")
    if "trace_iterations" in overrides:
        overrides["trace_iterations"] = tuple(overrides["trace_iterations"])
    config = dataclasses.replace(base, **overrides)
    config.validate()
    return config


def parse_value(text: str):
    """A command-line option value: a Python literal (``5``, ``2.0``, ``(0, 9)``) or the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_option(text: str) -> tuple:
    """``KEY=VALUE`` -> ``(key, parse_value(VALUE))``; an argparse ``type``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, parse_value(value)
