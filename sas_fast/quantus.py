"""``sas_fast.quantus.explain``: SaS and the baselines as a Quantus ``explain_func``.

Quantus metrics call ``explain_func(model=model, inputs=x_batch, targets=y_batch,
**explain_func_kwargs)`` with numpy ``B x C x H x W`` inputs and integer targets, add
``device=`` when the metric is given a device, and expect a numpy array back. :func:`explain`
is such a function: the method is chosen by ``method``, its options ride in
``explain_func_kwargs``. Nothing here imports Quantus.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from .attribute import attribute
from .baselines import BASELINES, extremal_perturbation

#: ``method`` name -> ``(model, images, target, **options) -> B x H x W``
METHODS = {"sas": attribute, **BASELINES, "extremal_perturbation": extremal_perturbation}


def _model_device(model: nn.Module, device) -> tuple:
    """``(device, dtype)`` of the model's inputs: ``device`` (checked against the model's
    parameters, which are not moved) or the parameters' device; the parameters' dtype."""
    param = next(model.parameters(), None)
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from err
    if param is not None and device.type == param.device.type and device.index is None:
        device = param.device                       # "cuda" given, the model on "cuda:1"
    if param is not None and device != param.device:
        raise ValueError(f"device is {str(device)!r} but the model's parameters are on {param.device}: "
                         "explain does not move the model")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return device, dtype


def explain(model: nn.Module, inputs, targets=None, method: str = "sas", device=None,
            **options) -> np.ndarray:
    """Attribution maps of ``inputs`` by ``method``, numpy in and numpy out: a Quantus ``explain_func``.

    Args:
        model (nn.Module): the classifier, ``B x C x H x W -> B x classes``; used in eval mode
            with frozen parameters and left as found (not moved to ``device``).
        inputs (ndarray or Tensor): ``B x C x H x W`` (channels first, as Quantus passes them),
            in the model's input space; converted to the dtype of the model's parameters.
        targets (ndarray, list, int, Tensor or None, optional): class per image (an int for all);
            None: the model's top-1 class. Default: None.
        method (str, optional): ``"sas"`` (:func:`sas_fast.attribute`), ``"gradient"``,
            ``"guided_backprop"``, ``"integrated_gradients"``, ``"grad_cam"`` or
            ``"extremal_perturbation"`` (:mod:`sas_fast.baselines`). Default: ``"sas"``.
        device (str, torch.device or None, optional): where the inputs go; must be where the
            model's parameters are. None: there. Default: None.
        **options: the method's options: for SaS the keywords of :func:`sas_fast.attribute`
            (``preset``, ``iterations``, ``layer``, any :class:`sas_fast.SaSConfig` field; no
            progress bar unless ``progress=True``), for a baseline its keyword arguments (e.g.
            ``n_steps`` of ``integrated_gradients``, ``layer`` of ``grad_cam``).

    Returns:
        *ndarray*: float32 ``B x 1 x H x W`` on the CPU (SaS: in [0, 1]; the baselines:
        non-negative, not normalised).

    Example::

        >>> import numpy as np, torch, sas_fast.quantus
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
        >>> x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
        >>> a = sas_fast.quantus.explain(model, x, np.array([1, 7]), iterations=3, num_masks=6,
        ...                              device="cpu")
        >>> type(a).__name__, a.shape, a.dtype
        ('ndarray', (2, 1, 16, 16), dtype('float32'))
        >>> sas_fast.quantus.explain(model, x, np.array([1, 7]), method="gradient").shape
        (2, 1, 16, 16)

    With Quantus: ``quantus.PixelFlipping(...)(model=model, x_batch=x, y_batch=y,
    explain_func=sas_fast.quantus.explain, explain_func_kwargs={"preset": "fast"})``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if method == "sas":
        if options.get("return_trace"):
            raise ValueError("explain returns the maps only: return_trace=True is not allowed")
        options.setdefault("progress", False)
    else:
        allowed = list(inspect.signature(METHODS[method]).parameters)[3:]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"method {method!r} has no option(s) {unknown}; its options: {allowed}")
    device, dtype = _model_device(model, device)
    images = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
    saliency = METHODS[method](model, images.to(device, dtype), targets, **options)
    return saliency.detach().float().cpu().numpy()[:, None]
