"""Baseline attributions of the paper's table 2, on Captum (the ``eval`` extra) except Guided BP.

Every function is ``(model, images, target=None, **options) -> B x H x W`` float32, non-negative,
not normalised (the deletion game only uses the ranking). ``images`` ``B x C x H x W`` in the
model's input space; ``target`` a class per image (int, list, LongTensor[B]) or None for the
model's top-1 class. The model is used in eval mode with frozen parameters and left exactly as
found (:func:`sas_fast.checks.guarded_model`). Channel reductions follow docs/SPEC.md section 5.
"""
from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .checks import (autograd_on, check_images, guarded_model, is_int, is_real, model_logits, outside_inference,
                     resolve_layer, resolve_target)
from .guided import GuidedActivations
from .models.cifar import Residual


def _run(model: nn.Module, images: torch.Tensor, target, explain):
    """Resolve ``target`` and call ``explain(images, target)`` under the model guard, grads on."""
    check_images(images)
    with autograd_on(model), guarded_model(model):
        images = outside_inference(images.detach())
        with torch.no_grad():
            target = resolve_target(target, model_logits(model, images))
        x = images.clone().requires_grad_(True)
        return explain(x, target).detach().float()


def _check_count(name: str, value, low: int = 1, none: bool = False) -> None:
    """``value``: an integer >= ``low`` (or None if ``none``), else ``ValueError`` naming it."""
    if not ((none and value is None) or (is_int(value) and value >= low)):
        raise ValueError(f"{name} must be an integer >= {low}{' or None' if none else ''}, got {value!r}")


def gradient(model: nn.Module, images: torch.Tensor, target=None) -> torch.Tensor:
    """Gradient (Simonyan et al.): ``max_c |d z_target / d x_c|`` over channels."""
    from captum.attr import Saliency

    return _run(model, images, target, lambda x, t: Saliency(model).attribute(x, target=t, abs=True)
                .amax(1))


def guided_backprop(model: nn.Module, images: torch.Tensor, target=None) -> torch.Tensor:
    """Guided Backpropagation (Springenberg et al.): the input gradient with every ReLU-like
    activation (``nn.ReLU``, ``nn.ReLU6``, their functional forms, ``hardtanh`` clipping at 0) passing
    back only positive gradients, ``max_c |GBP_c|`` over channels. Raises ``ValueError`` for a model
    that applies no such activation (Guided BP would be the plain gradient)."""

    def explain(x, t):
        guide = GuidedActivations()
        with guide:
            logits = model(x)
        if guide.calls == 0:
            raise ValueError("guided_backprop: the model applies no ReLU, ReLU6 or hardtanh(min_val=0), so "
                             "Guided BP would equal the plain gradient; use gradient() for this model")
        score = logits.gather(1, t[:, None]).sum()
        grad, = torch.autograd.grad(score, x)
        return grad.abs().amax(1)
    return _run(model, images, target, explain)


def integrated_gradients(model: nn.Module, images: torch.Tensor, target=None, n_steps: int = 50,
                         baseline: float = 0.0, internal_batch_size: int | None = None) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al.) from the constant ``baseline`` (0 in the model's
    input space, as the game's fully removed image), ``n_steps`` Gauss-Legendre steps:
    ``sum_c |IG_c|`` over channels."""
    from captum.attr import IntegratedGradients

    _check_count("n_steps", n_steps)
    _check_count("internal_batch_size", internal_batch_size, none=True)
    if not is_real(baseline):
        raise ValueError(f"baseline must be a finite number, got {baseline!r}")

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

    layer = default_gradcam_layer(model) if layer is None else resolve_layer(model, layer)

    def explain(x, t):
        cam = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _run(model, images, target, explain)


HAS_TORCHRAY = importlib.util.find_spec("torchray") is not None


class _Cast(nn.Module):
    """Casts its input to ``dtype``."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def extremal_perturbation(model: nn.Module, images: torch.Tensor, target=None, areas=(0.1,),
                          max_iter: int = 800, step: int | None = None, sigma: float | None = None,
                          progress: bool = False) -> torch.Tensor:
    """Extremal Perturbation (Fong et al., 2019; TorchRay's implementation, preserve variant, blur
    perturbation, SGD with momentum, ``max_iter`` steps), one image at a time: the mean over
    ``areas`` of the smooth masks ``m_a`` (each of area ~ ``a``) that maximise the target logit
    of the blurred-outside-the-mask image. Mask step and smoothing scale with the image,
    ``step = max(1, round(7 s))`` and ``sigma = 21 s`` with ``s = min(H, W) / 224`` (TorchRay's
    7 and 21 at 224 px).

    Needs ``pip install --no-deps torchray`` (its own requirements include torchvision, which this
    function does not use); raises ``ImportError`` without it.
    """
    _check_count("max_iter", max_iter)
    _check_count("step", step, none=True)
    if sigma is not None and not (is_real(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0 or None, got {sigma!r}")
    areas = list(areas) if isinstance(areas, (list, tuple)) else [areas]
    if not areas or not all(is_real(a) and 0 < a <= 1 for a in areas):
        raise ValueError(f"areas must be numbers in (0, 1], at least one, got {areas!r}")
    if not HAS_TORCHRAY:
        raise ImportError("extremal_perturbation needs TorchRay: pip install --no-deps torchray")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)   # TorchRay reads its VERSION
        from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_ep
    from tqdm.auto import tqdm

    scale = min(images.shape[-2:]) / 224
    step = max(1, round(7 * scale)) if step is None else step
    sigma = 21 * scale if sigma is None else sigma

    net = nn.Sequential(_Cast(images.dtype), model)   # TorchRay's masks and pyramid are float32

    def explain(x, t):
        maps = []
        for i in tqdm(range(len(x)), desc="EP", disable=not progress):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.meshgrid")
                masks, _ = torchray_ep(net, x[i:i + 1].detach().float(), int(t[i]), areas=areas,
                                       max_iter=max_iter, step=step, sigma=sigma)
            maps.append(masks.mean(0)[0])
        return torch.stack(maps)
    return _run(model, images, target, explain)


BASELINES = {"gradient": gradient, "guided_backprop": guided_backprop,
             "integrated_gradients": integrated_gradients, "grad_cam": grad_cam}
