"""Baseline attributions of the paper's table 2, on Captum (the ``eval`` extra).

Every function is ``(model, images, target=None, **options) -> B x H x W`` float32, non-negative,
not normalised (the deletion game only uses the ranking). ``images`` ``B x C x H x W`` in the
model's input space; ``target`` a class per image (int, list, LongTensor[B]) or None for the
model's top-1 class. The model is used in eval mode with frozen parameters and left exactly as
found (:func:`sas_fast.attribute.guarded_model`). Channel reductions follow SPEC section 5.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .attribute import _resolve_layer, _resolve_target, guarded_model
from .models.cifar import Residual


def _run(model: nn.Module, images: torch.Tensor, target, explain):
    """Resolve ``target`` and call ``explain(images, target)`` under the model guard, grads on."""
    with guarded_model(model), torch.enable_grad():
        with torch.no_grad():
            target = _resolve_target(target, model(images.detach()))
        x = images.detach().clone().requires_grad_(True)
        return explain(x, target).detach().float()


def gradient(model: nn.Module, images: torch.Tensor, target=None) -> torch.Tensor:
    """Gradient (Simonyan et al.): ``max_c |d z_target / d x_c|`` over channels."""
    from captum.attr import Saliency

    return _run(model, images, target, lambda x, t: Saliency(model).attribute(x, target=t, abs=True)
                .amax(1))


def guided_backprop(model: nn.Module, images: torch.Tensor, target=None) -> torch.Tensor:
    """Guided Backpropagation (Springenberg et al.; hooks on the ``nn.ReLU`` modules):
    ``max_c |GBP_c|`` over channels."""
    from captum.attr import GuidedBackprop

    def explain(x, t):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return GuidedBackprop(model).attribute(x, target=t)
    return _run(model, images, target, lambda x, t: explain(x, t).abs().amax(1))


def integrated_gradients(model: nn.Module, images: torch.Tensor, target=None, n_steps: int = 50,
                         baseline: float = 0.0, internal_batch_size: int | None = None) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al.) from the constant ``baseline`` (0 in the model's
    input space, as the game's fully removed image), ``n_steps`` Gauss-Legendre steps:
    ``sum_c |IG_c|`` over channels."""
    from captum.attr import IntegratedGradients

    def explain(x, t):
        return IntegratedGradients(model).attribute(x, baselines=baseline, target=t, n_steps=n_steps,
                                                    internal_batch_size=internal_batch_size)
    return _run(model, images, target, lambda x, t: explain(x, t).abs().sum(1))


def default_gradcam_layer(model: nn.Module) -> nn.Module:
    """The last :class:`sas_fast.models.cifar.Residual` block (the paper's ResNet8: ``model[6]``)
    if there is one, else the last ``nn.Conv2d``."""
    modules = list(model.modules())
    residual = [m for m in modules if isinstance(m, Residual)]
    if residual:
        return residual[-1]
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no Conv2d layer: pass layer= to grad_cam")
    return convs[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, target=None, layer=None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.) on ``layer`` (an ``nn.Module`` in the model or its name;
    default :func:`default_gradcam_layer`): ``ReLU(sum_k mean_ij(dz/dA_k) A_k)``, bilinearly
    upsampled (``align_corners=False``) from the layer's resolution to ``H x W``."""
    from captum.attr import LayerGradCam

    layer = default_gradcam_layer(model) if layer is None else _resolve_layer(model, layer)

    def explain(x, t):
        cam = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _run(model, images, target, explain)


BASELINES = {"gradient": gradient, "guided_backprop": guided_backprop,
             "integrated_gradients": integrated_gradients, "grad_cam": grad_cam}
