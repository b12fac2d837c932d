"""Input checks shared by :func:`sas_fast.attribute`, :mod:`sas_fast.baselines` and the
deletion game: every bad input gets one ``ValueError`` naming the argument, the value and
what is allowed, before any work is done; the guard that puts the caller's model in eval
mode with frozen parameters and restores it (and refuses a second thread on a model in use);
a watch for non-finite scores during a SaS run; and :func:`warn_caller`, a warning that points at
the caller's line.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: on CUDA the non-finite watch reads its flags back (a host sync) every this many iterations
#: and after the last one; on CPU it checks every iteration (no device to wait for)
FINITE_CHECK_EVERY = 25
#: seeds are 64-bit unsigned integers (what ``torch.Generator.manual_seed`` and NumPy's
#: ``SeedSequence`` both take)
SEED_MAX = 2 ** 64 - 1


def warn_caller(message: str, category: type = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside this package: the caller's own
    line, however deep in sas_fast the warning was raised (Python 3.12's ``skip_file_prefixes``)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "sas_fast":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def is_int(value) -> bool:
    """A Python or NumPy integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int, after checking it is an integer in ``[0, SEED_MAX]``."""
    if not is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**64 - 1], got {seed!r}")
    return int(seed)


def check_images(images, window: int | None = None) -> None:
    """``images``: a non-empty, finite, floating-point ``B x C x H x W`` tensor with data (not on
    the ``meta`` device), each side at least ``window`` if given."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be 4-D (B x C x H x W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    if images.device.type == "meta":
        raise ValueError("images are on the 'meta' device, which holds no values; move them to "
                         "'cpu' or 'cuda'")
    if images.shape[0] < 1:
        raise ValueError("images is an empty batch")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or Inf")
    if window is not None and min(images.shape[-2:]) < window:
        raise ValueError(f"images are {images.shape[-2]} x {images.shape[-1]}, smaller than the "
                         f"window {window}; pass a smaller window=")


def check_writable(path, what: str = "output") -> Path:
    """``path`` as a ``Path``, after checking that a file can be written there (its folder
    exists and takes a new file; it is not itself a folder)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {what} {path}: it is a folder")
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as err:
        raise ValueError(f"cannot write {what} {path}: {err.strerror or err}") from err
    return path


def _mismatch(model: nn.Module, images: torch.Tensor) -> str | None:
    """Why ``model`` cannot take ``images`` (dtype or device of its parameters), or None."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    dtypes = {p.dtype for p in params}
    devices = {p.device for p in params}
    if dtypes and images.dtype not in dtypes:
        return (f"images are {images.dtype} but the model's parameters are "
                f"{', '.join(sorted(map(str, dtypes)))}: convert the images (e.g. images.float(); "
                "precision='bf16' runs a float32 model in bfloat16) or the model (model.to(dtype))")
    if devices and images.device not in devices:
        return (f"images are on {images.device} but the model's parameters are on "
                f"{', '.join(sorted(map(str, devices)))}: move both to one device")
    return None


def model_logits(model: nn.Module, images: torch.Tensor, args: tuple = (), classifier: bool = True):
    """``model(images, *args)``; with ``classifier`` checked to be finite ``B x classes`` logits.

    A model that fails on the images because of its parameters' dtype or device gets a
    ``ValueError`` saying so; other errors of the model pass through unchanged.
    """
    try:
        out = model(images, *args)
    except RuntimeError as err:
        reason = _mismatch(model, images)
        if reason is not None:
            raise ValueError(reason) from err
        raise
    if not classifier:
        return out
    b = images.shape[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model must return a tensor of B x classes logits, got a "
                         f"{type(out).__name__}; wrap it to return the logits tensor")
    if out.dim() != 2 or out.shape[0] != b:
        raise ValueError(f"the model must return B x classes logits, got shape {tuple(out.shape)} "
                         f"for {b} image(s); reshape its output to ({b}, classes)")
    if not out.is_floating_point():
        raise ValueError(f"the model must return real floating-point logits, got dtype {out.dtype}")
    if out.shape[1] == 0:
        raise ValueError(f"the model returned 0 classes (logits of shape {tuple(out.shape)}): nothing "
                         "to explain")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the model's output on the images contains NaN or Inf")
    return out


def _check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")


#: the thread using each module of a guarded model: ``{id(module): (thread id, depth)}``
_IN_USE: dict = {}
_IN_USE_LOCK = threading.Lock()


@contextlib.contextmanager
def _exclusive(model: nn.Module):
    """Marks every module of ``model`` as used by this thread for the duration (nesting in one
    thread is allowed); raises ``RuntimeError`` if another thread is using any of them."""
    me, modules = threading.get_ident(), [id(m) for m in model.modules()]
    with _IN_USE_LOCK:
        if any(_IN_USE.get(k, (me,))[0] != me for k in modules):
            raise RuntimeError(f"the model ({type(model).__name__} at {id(model):#x}) is in use by another "
                               "thread (an attribution or game runs on it): sas_fast switches it to "
                               "eval mode and freezes its parameters while it runs, so concurrent calls "
                               "on one model are refused; use one model copy per thread")
        for k in modules:
            _IN_USE[k] = (me, _IN_USE.get(k, (me, 0))[1] + 1)
    try:
        yield
    finally:
        with _IN_USE_LOCK:
            for k in modules:
                depth = _IN_USE[k][1] - 1
                if depth:
                    _IN_USE[k] = (me, depth)
                else:
                    del _IN_USE[k]


@contextlib.contextmanager
def guarded_model(model: nn.Module):
    """Eval mode with frozen parameters for the duration; every module's ``training`` flag
    and every parameter's ``requires_grad`` flag are restored exactly on exit. One thread at a
    time: a call from another thread while the model is guarded raises ``RuntimeError`` (and
    leaves the model alone)."""
    _check_module(model)
    with _exclusive(model):
        training = [(m, m.training) for m in model.modules()]
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for m, t in training:
                m.training = t
            for p, f in flags:
                p.requires_grad_(f)


@contextlib.contextmanager
def autograd_on(model: nn.Module):
    """Gradients on and ``torch.inference_mode`` off for the duration (attributions differentiate
    the model even when called under ``torch.inference_mode()`` or ``torch.no_grad()``); inputs
    made in inference mode go through :func:`outside_inference`. A model whose parameters or
    buffers are inference tensors cannot be differentiated: ``ValueError``."""
    _check_module(model)
    if any(t.is_inference() for t in (*model.parameters(), *model.buffers())):
        raise ValueError("the model's parameters or buffers were made under torch.inference_mode(), so "
                         "no gradient can flow through them: create or load the model outside it")
    with torch.inference_mode(False), torch.enable_grad():
        yield


def outside_inference(value):
    """``value``, or a normal copy of it if it is a tensor made under ``torch.inference_mode()``
    (call inside :func:`autograd_on`)."""
    return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value


def resolve_layer(model: nn.Module, layer):
    """The module ``layer`` names: None, an ``nn.Module`` inside ``model``, or the name of one
    (a key of ``model.named_modules()``)."""
    if layer is None:
        return None
    if isinstance(layer, str):
        named = dict(model.named_modules())
        if layer not in named:
            raise ValueError(f"layer {layer!r} is not a module of the model; some names: "
                             f"{[n for n in named if n][:10]}")
        return named[layer]
    if not isinstance(layer, nn.Module) or not any(m is layer for m in model.modules()):
        raise ValueError("layer must be an nn.Module inside the model (or its name)")
    return layer


def _target_values(target) -> torch.Tensor:
    """``target`` (not None) as a 1-D int64 CPU tensor, or ``ValueError`` naming what it is."""
    allowed = "None, an int, a list of ints (one per image) or an integer tensor"
    if isinstance(target, torch.Tensor):
        if target.device.type == "meta":
            raise ValueError("target is on the 'meta' device, which holds no values; give class indices "
                             "on 'cpu' or the images' device")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must be integer class indices ({allowed}), got dtype {target.dtype}")
        return target.detach().to("cpu", torch.long).flatten()
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise ValueError(f"target must be integer class indices ({allowed}), got dtype {target.dtype}")
        target = target.ravel().tolist()
    values = list(target) if isinstance(target, (list, tuple)) else [target]
    values = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 and v.device.type != "meta"
              and not (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool) else v for v in values]
    bad = [v for v in values if not is_int(v)]
    if bad:
        raise ValueError(f"target must be {allowed}, got {type(target).__name__} {target!r}")
    if any(not -2 ** 63 <= v < 2 ** 63 for v in values):
        raise ValueError(f"target {values} out of range: class indices are small non-negative integers")
    return torch.tensor(values, dtype=torch.long)


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """LongTensor[B] from an int, a list / tuple of B ints, a tensor of B (or one) ints, or None
    (top-1 of ``logits``), range-checked. As in Captum, a list must have one entry per
    image; an int or a one-element tensor is used for every image."""
    b, classes = logits.shape[0], logits.shape[-1]
    if target is None:
        return logits.argmax(dim=-1)
    if isinstance(target, (list, tuple)) and len(target) != b:
        raise ValueError(f"target is a list of {len(target)} entries for a batch of {b} images: give "
                         "one class per image, or an int for all")
    t = _target_values(target)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ValueError(f"target has {t.numel()} entries for a batch of {b} images")
    if bool(((t < 0) | (t >= classes)).any()):
        raise ValueError(f"target {t.tolist()} out of range for a model with {classes} classes")
    return t.to(logits.device).clone()


class FiniteWatch:
    """Stops a SaS run whose mask scores or pre-mask turn NaN / Inf.

    ``update(it, scores, premask)`` after iteration ``it`` records, on the device, the first
    iteration at which each mode's scores ``{mode: B x K'}`` or the updated pre-mask were not
    finite; every :data:`FINITE_CHECK_EVERY` iterations on CUDA (every iteration on CPU) and at
    ``iterations - 1`` it reads them back and raises a ``ValueError`` naming the iteration and
    the mode.
    """

    def __init__(self, modes, iterations: int, device: torch.device):
        self.iterations = iterations
        self.every = FINITE_CHECK_EVERY if torch.device(device).type == "cuda" else 1
        self.first = {m: torch.full((), iterations, device=device) for m in (*modes, "pre-mask")}

    def update(self, it: int, scores: dict, premask: torch.Tensor) -> None:
        values = {**scores, "pre-mask": premask}
        for name, first in self.first.items():
            bad = ~torch.isfinite(values[name].detach()).all()
            self.first[name] = torch.where(bad & (first > it), it, first)
        if (it + 1) % self.every == 0 or it == self.iterations - 1:
            self.check()

    def check(self) -> None:
        first = torch.stack(list(self.first.values())).tolist()
        it = min(first)
        name = list(self.first)[first.index(it)]     # the modes in run order, then the pre-mask
        if it >= self.iterations:
            return
        if name == "pre-mask":
            raise ValueError(f"the pre-mask became NaN or Inf in the update of iteration {it} (of "
                             f"{self.iterations}): its gradient was not finite or lr too large")
        raise ValueError(f"the model's {name} scores were NaN or Inf at iteration {it} (of "
                         f"{self.iterations}): the model gives non-finite outputs on masked (blurred) "
                         "images")
