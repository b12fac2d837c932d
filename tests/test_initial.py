"""The pre-mask's start (``sas_fast/initial.py``): Gaussian ranks, the one-pass maps, seeding,
batch independence, the passes it costs, and the settings it refuses."""
import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from sas_fast import attribute
from sas_fast.config import make_config
from sas_fast.initial import gaussian_ranks, init_map, initial_premask
from sas_fast.step import Objective


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).double().eval()


def images(b=3):
    return torch.randn(b, 3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_gaussian_ranks_are_normal_quantiles_of_the_ranks_ties_by_index():
    maps = torch.tensor([[[0.3, 0.1], [0.3, 0.9]], [[5.0, 5.0], [5.0, 5.0]]], dtype=torch.float64)
    got = gaussian_ranks(maps).numpy().reshape(2, 4)
    for b in range(2):
        flat = maps[b].flatten().numpy()
        ranks = np.empty(4)
        ranks[np.argsort(flat, kind="stable")] = np.arange(4)
        np.testing.assert_allclose(got[b], norm.ppf((ranks + 0.5) / 4), rtol=1e-12)


def test_init_maps_are_the_input_gradient_plain_and_guided():
    net, x, t = model(), images(2), torch.tensor([1, 3])
    objective = Objective(net, x, t)
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(net(xg).gather(1, t[:, None]).sum(), xg)
    assert torch.allclose(init_map(objective, x, "gradient", bf16=False), grad.abs().amax(1))
    guided = init_map(objective, x, "guided_backprop", bf16=False)
    assert guided.shape == (2, 12, 10) and not torch.allclose(guided, grad.abs().amax(1))


@pytest.mark.parametrize("init", ["gradient", "guided_backprop"])
def test_start_is_noise_plus_scaled_ranks_seeded_and_batch_independent(init):
    net, x, t = model(), images(3), torch.tensor([0, 1, 2])
    config = make_config("paper-cifar", init=init, init_scale=2.0, window=5).resolved(12, 10)
    noise = torch.randn(1, 1, 16, 14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = initial_premask(noise, Objective(net, x, t), x, config)
    assert start.shape == (3, 1, 16, 14) and start.requires_grad and start.is_leaf
    ranks = gaussian_ranks(init_map(Objective(net, x, t), x, init, bf16=False))
    assert torch.allclose(start[:, 0, 2:-2, 2:-2] - noise[0, 0, 2:-2, 2:-2], 2.0 * ranks)
    alone = initial_premask(noise, Objective(net, x[1:2], t[1:2]), x[1:2], config)
    assert torch.equal(alone[0], start[1])
    plain = initial_premask(noise, Objective(net, x, t), x, make_config("paper-cifar", window=5).resolved(12, 10))
    assert torch.equal(plain.detach(), noise.expand(3, -1, -1, -1))


def test_noise_scale_scales_the_random_start_only():
    net, x, t = model(), images(2), torch.tensor([0, 1])
    noise = torch.randn(1, 1, 16, 14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    config = make_config(window=5, noise_scale=0.25).resolved(12, 10)
    start = initial_premask(noise, Objective(net, x, t), x, config)
    assert torch.equal(start.detach(), 0.25 * noise.expand(2, -1, -1, -1))
    mixed = initial_premask(noise, Objective(net, x, t), x, make_config(
        window=5, noise_scale=0.25, init="gradient", init_scale=2.0).resolved(12, 10))
    ranks = gaussian_ranks(init_map(Objective(net, x, t), x, "gradient", bf16=False))
    assert torch.allclose(mixed[:, 0, 2:-2, 2:-2] - 0.25 * noise[0, 0, 2:-2, 2:-2], 2.0 * ranks)
    runs = [attribute(net, x, [0, 1], preset="fast", iterations=3, num_masks=5, progress=False)]
    runs += [attribute(net, x, [0, 1], preset="fast", iterations=3, num_masks=5, noise_scale=s, progress=False)
             for s in (1.0, 0.1)]
    assert torch.equal(runs[0], runs[1]) and (runs[0] - runs[2]).abs().max() > 1e-3


def test_trace_counts_the_init_pass_and_a_seed_gives_one_map():
    net, x = model(), images(2)
    a, trace = attribute(net, x, [0, 1], preset="fast", iterations=2, num_masks=5, init="gradient", return_trace=True,
                         progress=False)
    assert trace.passes.tolist() == [1 + 2 * 3 * 2] * 2
    b = attribute(net, x, [0, 1], preset="fast", iterations=2, num_masks=5, init="gradient", progress=False)
    c = attribute(net, x, [0, 1], preset="fast", iterations=2, num_masks=5, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("options, message", [
    ({"init": "gradcam"}, "unknown init 'gradcam'"),
    ({"init": "gradient", "init_scale": 0.0}, "init_scale must be a finite number > 0"),
    ({"init": "gradient", "init_scale": float("inf")}, "init_scale must be a finite number > 0"),
    ({"noise_scale": 0.0}, "noise_scale must be a finite number > 0"),
    ({"noise_scale": float("nan")}, "noise_scale must be a finite number > 0"),
    ({"noise_scale": "small"}, "noise_scale must be a finite number > 0"),
])
def test_bad_init_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_config(**options)


def test_feature_saliency_needs_the_noise_start():
    net = model()
    with pytest.raises(ValueError, match="feature saliency .* needs init='noise'"):
        attribute(net, images(1), layer=net[2], init="gradient", iterations=1)
