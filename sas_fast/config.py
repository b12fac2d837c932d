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

from .checks import check_seed, is_int, is_real

MODES = ("insertion", "deletion", "both")
#: the largest ``beta`` and ``sharpness`` accepted. ``beta``: at 1e8 the soft-max pool is already
#: a hard max in float32, and near 1e30 it overflows. ``sharpness``: every mask is binary in
#: float32 well before 1e6; at 32 px the pre-mask's gradient falls from 0.3-1.1 (max abs) at
#: 1e5 to 3e-10-1e-5 at 1e6 (only the implicit threshold term is left)
BETA_MAX, SHARPNESS_MAX = 1e8, 1e5
PRECISIONS = ("auto", "fp32", "bf16")
LR_DECAYS = ("none", "cosine", "linear", "warmup-cosine")
AREA_SAMPLINGS = ("stratified", "antithetic", "balanced", "balanced-antithetic")
INITS = ("noise", "gradient", "guided_backprop")


@dataclass(frozen=True)
class SaSConfig:
    """Hyperparameters of one SaS run (docs/SPEC.md sections 2-4). The field defaults are the
    paper's 32-px schedule (preset ``paper-cifar``, 7,200 passes per image); the ``default``
    preset, what :func:`sas_fast.attribute` runs, is the ``fast`` schedule (:data:`PRESETS`).

    ``max_batch`` only splits the model calls: SaS's own arithmetic is the same for every
    value, so the result is bit-identical whenever the model's outputs and input gradients for
    a masked image do not depend on how many images share its call. Common layers pick
    batch-size-dependent kernels (e.g. a Linear layer on one row or on many), which changes
    the last bits, and the optimisation amplifies that like any rounding change: max abs
    difference of the [0, 1] saliency with ``max_batch=1`` against ``None`` 2.4e-7 after 30
    iterations and 3.2e-6 after 200 (tests/test_attribute.py's TextureDetector, CPU float32).
    """

    mode: str = "both"            # loss, paper eq. 7: insertion | deletion | both (paper: both)
    num_masks: int = 20           # K masks, areas k / (K - 1), k = 0..K-1 (paper: 20; proto: OFF..ON)
    iterations: int = 200         # optimisation steps (paper: 200 at 32 px, 800 on ImageNet)
    lr: float = 0.05              # Adam learning rate on the pre-mask (ours; proto used SGD, lr unpublished)
    lr_decay: str = "none"        # none | cosine | linear | warmup-cosine: the factor on lr at iteration i,
                                  # SaSConfig.lr_factor (ours)
    lr_end: float = 0.0           # the factor a decay ends at: it runs from 1 to lr_end (ours)
    betas: tuple = (0.9, 0.999)   # Adam's moment decays (torch's defaults)
    area_samples: int | None = None  # inner areas evaluated per iteration, stratified (None: all K - 2) (ours)
    area_sampling: str = "stratified"  # how the strata's areas are drawn: stratified | antithetic | balanced |
                                  # balanced-antithetic (ours, sas_fast/sampling.py)
    control_variate: bool = False  # SAGA over the sampled areas: each area's last gradient kept (ours,
                                  # sas_fast/control_variate.py; needs area_samples, stratified draws)
    window: int | None = None     # smoothing / soft-max-pool window ws, odd (proto: 41 at 224 px)
    beta: float = 1.0             # soft-max-pool inverse temperature (proto)
    sharpness: float = 20.0       # s in m = sigmoid(s (schedule - t)) (proto)
    sharpness_start: float | None = None  # anneal s geometrically from this to ``sharpness`` over the run
                                  # (None: constant; ours, SaSConfig.sharpness_at)
    levels: int = 8               # blur-pyramid levels L (proto, from Extremal Perturbations)
    max_blur: float | None = None # sigma of the most blurred level (proto: 20 at 224 px)
    implicit_grad: bool = True    # differentiate through the thresholds (proto; docs/SPEC.md section 3)
    threshold_tol: float = 1e-4   # stop the threshold solve at max |area residual| < tol (proto)
    threshold_max_iter: int = 50  # Levenberg-Marquardt step cap of the threshold solve (ours)
    coarse_block: int = 1         # in the coarse phase the pre-mask moves in blocks of this many pixels square
                                  # (its gradient averaged per block; 1: no coarse phase) (ours)
    coarse_fraction: float = 0.0  # the coarse phase is the first round(this x iterations) iterations (ours)
    average_tail: float = 0.0     # the map is the schedule of the pre-mask averaged over the last this fraction of
                                  # the iterations (Polyak-Ruppert tail average; 0: the last pre-mask) (ours)
    seed: int = 0                 # pre-mask init N(0, 1) from torch.Generator(seed) (proto)
    noise_scale: float = 1.0      # the pre-mask starts at this times that N(0, 1) noise (ours; proto: 1)
    init: str = "noise"           # noise | gradient | guided_backprop: add a one-pass map's Gaussian ranks (ours,
                                  # sas_fast/initial.py; class saliency only)
    init_scale: float = 1.0       # weight of that map against the N(0, 1) noise (ours)
    max_batch: int | None = None  # at most this many masked images per model call (None: all at once on
                                  # a GPU, sized by the model's measured activations on a CPU: ours,
                                  # sas_fast/cpu_memory.py; see above)
    backend: str = "auto"         # ops backend: auto | reference | triton | cpp
    precision: str = "auto"       # model precision: auto | fp32 | bf16 (autocast; masks stay fp32);
                                  # auto: bf16 where the device computes it natively (ours, precision.py)
    channels_last: bool | None = None  # model input layout; None: channels-last with bf16 and on a CPU (ours)
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

    def lr_factor(self, iteration: int) -> float:
        """The factor on ``lr`` at ``iteration`` i of n: 1 (``none``); ``e + (1 - e) d(i)`` with
        ``e = lr_end`` and the decay ``d(i) = (1 + cos(pi i / n)) / 2`` (``cosine``), ``1 - i / n``
        (``linear``) or, for ``warmup-cosine``, the cosine over the ``n - w`` iterations after a
        warm-up of ``(i + 1) / w`` over the first ``w = max(1, round(n / 10))``."""
        n = self.iterations
        if self.lr_decay == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * iteration / n))
        elif self.lr_decay == "linear":
            decay = 1 - iteration / n
        elif self.lr_decay == "warmup-cosine":
            warm = max(1, round(n / 10))
            if iteration < warm:
                return (iteration + 1) / warm
            decay = 0.5 * (1 + math.cos(math.pi * (iteration - warm) / max(1, n - warm)))
        else:
            return 1.0
        return self.lr_end + (1 - self.lr_end) * decay

    def sharpness_at(self, iteration: int) -> float:
        """The mask sharpness of ``iteration``: ``sharpness``, or with ``sharpness_start`` the
        geometric path ``start (sharpness / start) ** (i / (iterations - 1))`` (start at
        iteration 0, ``sharpness`` at the last)."""
        if self.sharpness_start is None or self.iterations == 1:
            return self.sharpness
        return self.sharpness_start * (self.sharpness / self.sharpness_start) ** (iteration / (self.iterations - 1))

    def init_passes(self) -> int:
        """Model image-passes per explained image spent before the first iteration (the init map)."""
        return 0 if self.init == "noise" else 1

    def coarse_iterations(self) -> int:
        """The iterations of the coarse phase (``coarse_block`` > 1): the first
        ``round(coarse_fraction * iterations)``; 0 without one."""
        return round(self.coarse_fraction * self.iterations) if self.coarse_block > 1 else 0

    def average_start(self) -> int | None:
        """The first iteration whose updated pre-mask enters the tail average: the last
        ``max(1, round(average_tail * iterations))`` iterations; None without ``average_tail``."""
        if not self.average_tail:
            return None
        return self.iterations - max(1, round(self.average_tail * self.iterations))

    def passes_per_iteration(self) -> int:
        """Model image-passes per explained image per iteration (forward + input-gradient backward
        of one masked image = 1): one per evaluated inner area and mode."""
        modes = 2 if self.mode == "both" else 1
        return modes * (self.area_samples or self.num_masks - 2)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range or mistyped setting."""
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        for name in ("num_masks", "iterations", "levels", "seed", "threshold_max_iter", "coarse_block"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.num_masks < 3:
            raise ValueError(f"num_masks must be >= 3 (the fully-OFF and fully-ON masks are constant, "
                             f"so at least one mask in between is needed), got {self.num_masks}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.window is not None and (type(self.window) is not int or self.window < 1
                                        or self.window % 2 == 0):
            raise ValueError(f"window must be a positive odd integer or None, got {self.window!r}")
        if self.max_batch is not None and (type(self.max_batch) is not int or self.max_batch < 1):
            raise ValueError(f"max_batch must be an integer >= 1 or None, got {self.max_batch!r}")
        for name in ("lr", "beta", "sharpness", "threshold_tol"):
            if not (is_real(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.sharpness_start is not None:
            if not (is_real(self.sharpness_start) and 0 < self.sharpness_start <= SHARPNESS_MAX):
                raise ValueError(f"sharpness_start must be None or a finite number in (0, {SHARPNESS_MAX:g}], "
                                 f"got {self.sharpness_start!r}")
            if self.cuda_graph:
                raise ValueError("cuda_graph=True replays one fixed iteration: it needs sharpness_start=None, "
                                 f"got {self.sharpness_start!r}")
        for name, top in (("beta", BETA_MAX), ("sharpness", SHARPNESS_MAX)):
            if getattr(self, name) > top:
                raise ValueError(f"{name} must be at most {top:g} (beyond, the float32 masks are binary or "
                                 f"overflow and hardly any gradient flows), got {getattr(self, name)!r}")
        if self.threshold_tol >= 1:
            raise ValueError(f"threshold_tol must be < 1 (area residuals lie in [0, 1], so a larger "
                             f"tolerance stops the threshold solve before it starts), got {self.threshold_tol!r}")
        check_seed(self.seed)
        if self.max_blur is not None and not (is_real(self.max_blur) and self.max_blur >= 0):
            raise ValueError(f"max_blur must be a finite number >= 0 or None, got {self.max_blur!r}")
        if self.threshold_max_iter < 1:
            raise ValueError(f"threshold_max_iter must be >= 1, got {self.threshold_max_iter}")
        for name in ("implicit_grad", "cuda_graph", "control_variate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be True, False or None, got {self.channels_last!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {INITS}")
        if not (is_real(self.noise_scale) and self.noise_scale > 0):
            raise ValueError(f"noise_scale must be a finite number > 0 (the standard deviation of the "
                             f"pre-mask's random start), got {self.noise_scale!r}")
        if not (is_real(self.init_scale) and self.init_scale > 0):
            raise ValueError(f"init_scale must be a finite number > 0, got {self.init_scale!r}")
        if self.coarse_block < 1:
            raise ValueError(f"coarse_block must be >= 1 (the side of the pixel blocks that move together in "
                             f"the coarse phase; 1: none), got {self.coarse_block}")
        if not (is_real(self.coarse_fraction) and 0 <= self.coarse_fraction <= 1):
            raise ValueError(f"coarse_fraction must be a number in [0, 1] (the fraction of the iterations "
                             f"that are coarse), got {self.coarse_fraction!r}")
        if self.cuda_graph and self.coarse_iterations():
            raise ValueError("cuda_graph=True replays one fixed iteration: it needs no coarse phase "
                             f"(coarse_block=1 or coarse_fraction=0), got coarse_block={self.coarse_block} "
                             f"and coarse_fraction={self.coarse_fraction!r}")
        if not (is_real(self.average_tail) and 0 <= self.average_tail <= 1):
            raise ValueError(f"average_tail must be a number in [0, 1] (the fraction of the iterations whose "
                             f"pre-masks are averaged), got {self.average_tail!r}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; choose one of {LR_DECAYS}")
        if not (is_real(self.lr_end) and 0 <= self.lr_end < 1):
            raise ValueError(f"lr_end must be a number in [0, 1) (the factor on lr that the decay ends at), "
                             f"got {self.lr_end!r}")
        if self.lr_end and self.lr_decay == "none":
            raise ValueError(f"lr_end={self.lr_end!r} needs a decay: lr_decay one of {LR_DECAYS[1:]}, got 'none'")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(is_real(b) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1) (Adam's moment decays), got {self.betas!r}")
        inner = self.num_masks - 2
        if self.area_samples is not None and (type(self.area_samples) is not int
                                              or self.area_samples < 1 or inner % self.area_samples):
            divisors = sorted({d for i in range(1, math.isqrt(inner) + 1) if inner % i == 0
                               for d in (i, inner // i)})
            hint = (f" (the presets 'default' = 'fastest' sample 2 areas per iteration, 'fast' 3: with "
                    f"num_masks={self.num_masks} pass one of those, or preset='paper-cifar' for every area)"
                    if self.area_samples in (2, 3) else "")
            raise ValueError(f"area_samples must divide the {inner} inner areas (num_masks - 2) so every "
                             f"stratum has the same size: one of {divisors} or None, got {self.area_samples}{hint}")
        if self.area_sampling not in AREA_SAMPLINGS:
            raise ValueError(f"unknown area_sampling {self.area_sampling!r}; choose one of {AREA_SAMPLINGS}")
        if self.control_variate and (self.area_samples is None or self.area_sampling != "stratified"):
            raise ValueError(f"control_variate=True needs sampled areas with independent draws: area_samples "
                             f"set and area_sampling='stratified', got area_samples={self.area_samples} and "
                             f"area_sampling={self.area_sampling!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.levels < 2:
            raise ValueError(f"levels must be >= 2, got {self.levels}")
        if not isinstance(self.trace_iterations, (tuple, list)):
            raise ValueError(f"trace_iterations must be a tuple of iterations, got "
                             f"{self.trace_iterations!r}")
        bad = [i for i in self.trace_iterations if not (type(i) is int and 0 <= i < self.iterations)]
        if bad:
            raise ValueError(f"trace_iterations must be iterations of the run, integers in "
                             f"[0, {self.iterations - 1}], got {bad}")


#: named configurations. ``default`` (what ``attribute``, ``SaS`` and the CLI run) is the ``fastest``
#: schedule: 1/16 of the paper schedule's model image-passes (448), 2 of the 18 inner areas per
#: iteration (stratified), 112 iterations at a constant lr 0.1, the map from the pre-mask averaged
#: over the last half of the run, a start of 0.5 N(0, 1). It won the tenth of ten rounds of 450-pass
#: candidates, chosen on fresh held-out 32-px images; on the evaluation images it is within 0.01 of
#: the paper schedule's deletion-game Overall on all four 32-px settings (mean of two seeds, -0.005
#: to -0.008) and +0.038 ahead of ``fast-imagenet`` on 64 ImageNet photos at 224 px, so by the rule
#: fixed before (the cheaper preset that passes both tests is the default) it replaced ``fast``
#: (1,800 passes: 3 of 18 areas, 300 iterations, lr 0.1 with cosine decay; within 0.01 at 32 px and
#: of ``fast-imagenet`` at 224 px). The :class:`SaSConfig` field defaults are the paper schedule
#: (``paper-cifar``, 7,200 passes). ``fast-imagenet`` is the ImageNet schedule cut to 1/4 (200
#: iterations). Studies: ``benchmarks/RESULTS.md``, "Fewer model passes per image" and "ImageNet at
#: 224 px"; rules in ``benchmarks/studies/rules.md``.
FAST = SaSConfig(iterations=300, area_samples=3, lr=0.1, lr_decay="cosine")                   # 1,800 passes
FASTEST = SaSConfig(iterations=112, area_samples=2, lr=0.1, average_tail=0.5, noise_scale=0.5)  # 448 passes
PRESETS = {
    "default": FASTEST,
    "fastest": FASTEST,
    "fast": FAST,
    "paper-cifar": SaSConfig(iterations=200),       # paper section 4: MNIST, CIFAR-10/100; 7,200 passes
    "paper-imagenet": SaSConfig(iterations=800),    # paper section 4: ImageNet; 28,800 passes
    "fast-imagenet": SaSConfig(iterations=200),                                              # 7,200 passes
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
    if isinstance(overrides.get("betas"), list):
        overrides["betas"] = tuple(overrides["betas"])
    if isinstance(overrides.get("trace_iterations"), (list, tuple, range)):
        overrides["trace_iterations"] = tuple(int(i) if is_int(i) else i
                                              for i in overrides["trace_iterations"])
    overrides = {k: int(v) if is_int(v) else v for k, v in overrides.items()}   # NumPy integers too
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
