"""Baselines: shapes, channel reductions, per-sample targets, the model left exactly as found."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sas_fast import baselines
from sas_fast.guided import GuidedActivations
from sas_fast.models.cifar import Residual, cbr

pytest.importorskip("captum")


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(cbr(3, 8, 3), nn.MaxPool2d(2), Residual(8), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def images(b=3):
    return torch.randn(b, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def module_state(model):
    return [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(m._backward_pre_hooks)) for m in model.modules()]


METHODS = dict(baselines.BASELINES)
if baselines.HAS_TORCHRAY:
    METHODS["extremal_perturbation"] = functools.partial(baselines.extremal_perturbation, max_iter=30)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_shape_targets_and_model_unchanged(name):
    f = METHODS[name]
    model, x = small_model().train(), images()
    model[0][1].eval()
    model[-1].weight.requires_grad_(False)
    model[2].register_forward_hook(lambda m, i, o: None)
    flags = [p.requires_grad for p in model.parameters()]
    before, state = module_state(model), {k: v.clone() for k, v in model.state_dict().items()}

    a = f(model, x, [0, 1, 2])
    assert a.shape == (3, 12, 12) and a.dtype == torch.float32
    assert bool(torch.isfinite(a).all()) and bool((a >= 0).all()) and float(a.amax()) > 0
    b = f(model, x, [3, 1, 0])
    assert torch.allclose(a[1], b[1], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(a[0], b[0], rtol=1e-3) and not torch.allclose(a[2], b[2], rtol=1e-3)
    alone = f(model, x[2:], 2)
    assert torch.allclose(a[2:], alone, rtol=1e-4, atol=1e-6)

    assert module_state(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("call, message", [
    (lambda m: baselines.gradient(m, images(2), [1]), "list of 1 entries for a batch of 2"),
    (lambda m: baselines.grad_cam(m, images(2).half(), 0), "images are torch.float16 but the model's"),
    (lambda m: baselines.integrated_gradients(nn.Sequential(m, nn.Unflatten(1, (1, 4))), images(2), 0),
     r"got shape \(2, 1, 4\)"),
    (lambda m: baselines.guided_backprop(m, images(2).index_fill(3, torch.tensor([0]), float("inf")), 0),
     "NaN or Inf"),
])
def test_bad_input_raises_clearly_and_leaves_model_as_found(call, message):
    model = small_model().train()
    before = module_state(model)
    with pytest.raises(ValueError, match=message):
        call(model)
    assert module_state(model) == before and all(p.requires_grad for p in model.parameters())


def input_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    model.eval()
    model(x).gather(1, target[:, None]).sum().backward()
    return x.grad


def test_gradient_is_max_abs_over_channels():
    model, x, t = small_model(), images(), torch.tensor([0, 1, 2])
    expected = input_gradient(model, x, t).abs().amax(1)
    assert torch.allclose(baselines.gradient(model, x, t), expected, atol=1e-7)


def test_integrated_gradients_is_sum_abs_and_complete():
    """Sum |.| over channels; the signed attributions sum to z(x) - z(0) (completeness)."""
    model, x, t = small_model().eval(), images(2), torch.tensor([1, 3])
    ig = baselines.integrated_gradients(model, x, t, n_steps=64)
    from captum.attr import IntegratedGradients
    signed = IntegratedGradients(model).attribute(x, baselines=0.0, target=t, n_steps=64)
    assert torch.allclose(ig, signed.abs().sum(1), atol=1e-6)
    with torch.no_grad():
        gap = model(x).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    assert torch.allclose(signed.sum((1, 2, 3)), gap, atol=0.05 * float(gap.abs().max()))


def test_grad_cam_default_layer_relu_and_upsampling():
    model, x, t = small_model().eval(), images(2), torch.tensor([0, 3])
    assert baselines.default_gradcam_layer(model) is model[2]
    feats = {}
    handle = model[2].register_forward_hook(lambda m, i, o: feats.update(a=o))
    out = model(x)
    handle.remove()
    grads = torch.autograd.grad(out.gather(1, t[:, None]).sum(), feats["a"])[0]
    cam = F.relu((grads.mean((2, 3), keepdim=True) * feats["a"]).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    got = baselines.grad_cam(model, x, t)
    assert torch.allclose(got, expected.detach(), atol=1e-6)
    by_name = baselines.grad_cam(model, x, t, layer="3")
    assert by_name.shape == (2, 12, 12) and not torch.allclose(by_name, got)


def test_guided_backprop_differs_from_gradient():
    model, x = small_model(), images(2)
    assert not torch.allclose(baselines.guided_backprop(model, x, 0), baselines.gradient(model, x, 0))


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_guided_backprop_equals_captums_on_nn_relu_models():
    from captum.attr import GuidedBackprop

    model, x = small_model().eval(), images(2)
    captum = GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=torch.tensor([1, 2]))
    assert torch.allclose(baselines.guided_backprop(model, x, [1, 2]), captum.abs().amax(1), atol=1e-6)


class ClipNet(nn.Module):
    """x -> W1 -> ReLU6 (one module, called twice) -> W2 -> F.relu -> W3 -> Tensor.relu -> W4: the
    activations Captum's module hooks miss."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = nn.ParameterList([nn.Parameter(torch.randn(n, m, generator=g, dtype=torch.float64))
                                   for n, m in ((10, 12), (10, 10), (10, 10), (4, 10))])
        self.act = nn.ReLU6()

    def forward(self, x):
        h = self.act(3 * x.flatten(1) @ self.w[0].T)
        h = self.act(h @ self.w[1].T)
        h = F.relu(h @ self.w[2].T).relu()
        return h @ self.w[3].T


def test_guided_backprop_guides_relu6_and_functional_relus_exactly():
    """Against the guided rule written out layer by layer in float64:
    g_{l-1} = W_l^T (max(g_l, 0) * [lo < z_l < hi])."""
    model = ClipNet()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = [p.detach() for p in model.w]
    z1 = 3 * x.flatten(1) @ w[0].T
    z2 = z1.clamp(0, 6) @ w[1].T
    z3 = z2.clamp(0, 6) @ w[2].T
    assert bool(((z1 > 6) | (z2 > 6)).any()) and bool(((z1 < 0) & (z2 < 0)).any())   # both clips active
    g = w[3][torch.tensor([0, 3])]                                            # d logit_t / d h3
    g = (g.clamp(min=0) * (z3 > 0)).clamp(min=0) * (z3 > 0)                   # .relu() after F.relu
    g = (g @ w[2]).clamp(min=0) * ((z2 > 0) & (z2 < 6))
    g = (g @ w[1]).clamp(min=0) * ((z1 > 0) & (z1 < 6))
    expected = (3 * g @ w[0]).view(2, 3, 2, 2).abs().amax(1)
    got = baselines.guided_backprop(model, x, [0, 3])
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, baselines.gradient(model, x, [0, 3]), rtol=1e-3)


def test_guided_backprop_refuses_a_model_without_relus():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no ReLU, ReLU6 or hardtanh"):
        baselines.guided_backprop(model, images(1), 0)


def test_guided_backprop_guides_every_relu6_of_efficientnet_lite0():
    models = pytest.importorskip("sas_fast.models")
    try:
        model = models.efficientnet_lite0()
    except ImportError:
        pytest.skip("the demo extra (EfficientNet-Lite0) is not installed")
    calls = []
    for m in model.modules():
        if isinstance(m, nn.ReLU6):
            m.register_forward_pre_hook(lambda mod, inp: calls.append(1))
    guide = GuidedActivations()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), guide:
        model(x)
    assert len(calls) > 30 and guide.calls == len(calls)
    gbp, grad = baselines.guided_backprop(model, x, 7), baselines.gradient(model, x, 7)
    assert not torch.allclose(gbp, grad, rtol=0.1)


def test_default_target_is_top1():
    model, x = small_model().eval(), images(2)
    top1 = model(x).argmax(1)
    assert torch.equal(baselines.gradient(model, x), baselines.gradient(model, x, top1))


class PatchMean(nn.Module):
    """Class 0's logit is 50 x the mean of channel 0 over rows 2:6, columns 8:12; class 1's is 0."""

    def forward(self, x):
        z = 50 * x[:, 0, 2:6, 8:12].mean((1, 2))
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_extremal_perturbation_finds_the_planted_patch():
    pytest.importorskip("torchray")
    x = torch.full((1, 3, 16, 16), -1.0)
    x[:, :, 2:6, 8:12] = 1.0
    m = baselines.extremal_perturbation(PatchMean(), x, 0, areas=(0.0625,), max_iter=300)
    assert m.shape == (1, 16, 16)
    inside = m[0, 2:6, 8:12].mean()
    outside = (m[0].sum() - m[0, 2:6, 8:12].sum()) / (256 - 16)
    assert float(inside) > 0.5 and float(inside) > 3 * float(outside)


def test_extremal_perturbation_of_a_float64_model():
    pytest.importorskip("torchray")
    model, x = small_model(), images(2)
    single = baselines.extremal_perturbation(model, x, [0, 1], max_iter=5)
    double = baselines.extremal_perturbation(model.double(), x.double(), [0, 1], max_iter=5)
    assert double.dtype == torch.float32 and torch.allclose(single, double, atol=1e-5)


def test_extremal_perturbation_without_torchray_says_how_to_install(monkeypatch):
    monkeypatch.setattr(baselines, "HAS_TORCHRAY", False)
    with pytest.raises(ImportError, match="pip install --no-deps torchray"):
        baselines.extremal_perturbation(small_model(), images(1), 0)
