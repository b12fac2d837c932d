"""Input checks shared by :func:`sas_fast.attribute`, :mod:`sas_fast.baselines` and the
deletion game: every bad input gets one ``ValueError`` naming the argument, the value and
what is allowed, before any work is done; the guard that puts the caller's model in eval
mode with frozen parameters and restores it; and a watch for non-finite scores during a SaS run.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import tempfile
from pathlib import Path

import torch
from torch import nn

#: on CUDA the non-finite watch reads its flags back (a host sync) every this many iterations
#: and after the last one; on CPU it checks every iteration (no device to wait for)
FINITE_CHECK_EVERY = 25


def is_int(value) -> bool:
    """A Python or NumPy integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


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
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the model's output on the images contains NaN or Inf")
    return out


@contextlib.contextmanager
def guarded_model(model: nn.Module):
    """Eval mode with frozen parameters for the duration; every module's ``training`` flag
    and every parameter's ``requires_grad`` flag are restored exactly on exit."""
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


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """LongTensor[B] from an int, a list / tuple of B ints, a tensor of B (or one) ints, or None
    (top-1 of ``logits``), range-checked. As in Captum, a list must have one entry per
    image; an int or a one-element tensor is used for every image."""
    b, classes = logits.shape[0], logits.shape[-1]
    if target is None:
        return logits.argmax(dim=-1)
    if isinstance(target, bool) or (isinstance(target, torch.Tensor) and target.is_floating_point()):
        raise ValueError(f"target must be integer class indices, got {target!r}")
    if isinstance(target, (list, tuple)) and len(target) != b:
        raise ValueError(f"target is a list of {len(target)} entries for a batch of {b} images: give "
                         "one class per image, or an int for all")
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"target must be integer class indices, got dtype {t.dtype}")
    t = t.to(torch.long).flatten().to(logits.device)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ValueError(f"target has {t.numel()} entries for a batch of {b} images")
    if bool(((t < 0) | (t >= classes)).any()):
        raise ValueError(f"target {t.tolist()} out of range for a model with {classes} classes")
    return t.clone()


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
