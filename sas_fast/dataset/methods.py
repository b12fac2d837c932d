"""The attribution methods of a dataset run: SaS, or one of the baselines of
:mod:`sas_fast.baselines` under its command-line name, with the model image-passes (``steps``) it
spends per image. A baseline takes no SaS option and runs its model in float32."""
from __future__ import annotations

import torch

from .. import baselines
from .errors import DatasetRunError

#: command-line name -> (baseline function name, steps per image); ``sas`` is SaS itself
BASELINES = {"gradient": ("gradient", 1), "guided-bp": ("guided_backprop", 1),
             "integrated-gradients": ("integrated_gradients", 50), "grad-cam": ("grad_cam", 1),
             "extremal-perturbation": ("extremal_perturbation", 800)}
METHODS = ("sas",) + tuple(BASELINES)


def check_method(method: str, iterations, precision, sas_options: dict) -> None:
    """``DatasetRunError`` before any work for an unknown method, a baseline given SaS settings,
    or Extremal Perturbation without TorchRay."""
    if method not in METHODS:
        raise DatasetRunError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "sas":
        return
    given = [k for k, v in (("iterations", iterations), ("precision", precision)) if v is not None]
    given += list(sas_options)
    if given:
        raise DatasetRunError(f"method {method} takes no SaS setting ({', '.join(given)}): leave "
                              "it out, or use method sas")
    if method == "extremal-perturbation" and not baselines.HAS_TORCHRAY:
        raise DatasetRunError("method extremal-perturbation needs TorchRay: pip install --no-deps torchray")


def baseline_maps(method: str, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``B x H x W`` maps of baseline ``method`` for images ``x`` and classes ``target``."""
    return getattr(baselines, BASELINES[method][0])(model, x, target)
