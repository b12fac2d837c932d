"""The reference ops against direct, independent formulations (explicit loops, 2-D kernels),
their float64 gradchecks, and the implicit threshold gradient against a converged solve."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sas_fast import ops
from sas_fast.ops import reference as R

D = torch.float64


def explicit_softmax_pool(x, window, beta):
    """out[i, j] = sum over the reflection-padded window of softmax(beta * w) * w, by loops."""
    r = window // 2
    xp = F.pad(x, (r, r, r, r), mode="reflect")
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                w = xp[b, 0, i:i + window, j:j + window].flatten()
                out[b, 0, i, j] = (torch.softmax(beta * w, 0) * w).sum()
    return out


def explicit_smooth(premask, window):
    if window == 1:                                # sigma = 0: the identity
        return premask
    sigma = (window - 1) / 4
    x = torch.arange(window, dtype=D) - window // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    return F.conv2d(premask, kernel[None, None].to(premask.dtype))


@pytest.mark.parametrize("shape,window,beta", [((2, 9, 7), 3, 1.0), ((1, 8, 11), 5, 2.5), ((3, 6, 6), 1, 1.0)])
def test_smooth_softmax_pool_matches_explicit_loops(shape, window, beta):
    b, h, w = shape
    r = window // 2
    premask = torch.randn(b, 1, h + 2 * r, w + 2 * r, dtype=D) * 3
    expected = explicit_softmax_pool(explicit_smooth(premask, window), window, beta)
    got = ops.smooth_softmax_pool(premask, window, beta, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_softmax_pool_is_stable_for_huge_values():
    x = torch.randn(1, 1, 9, 10, dtype=torch.float32) * 1e4
    out = R.softmax_pool(x, 5, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.max_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, 1))


def test_softmax_pool_gradient_formula():
    """d out_i / d w_j = p_j (1 + beta (w_j - out_i)) for every j in the window (SPEC 2.3)."""
    beta = 1.7
    x = torch.randn(1, 1, 5, 5, dtype=D, requires_grad=True)
    out = R.softmax_pool(x, 3, beta)
    (grad,) = torch.autograd.grad(out[0, 0, 2, 2], x)
    w = x.detach()[0, 0, 1:4, 1:4]
    p = torch.softmax(beta * w.flatten(), 0).view(3, 3)
    expected = torch.zeros(5, 5, dtype=D)
    expected[1:4, 1:4] = p * (1 + beta * (w - out[0, 0, 2, 2].detach()))
    torch.testing.assert_close(grad[0, 0], expected)


def test_gradcheck_smooth_softmax_pool():
    premask = torch.randn(2, 1, 9, 8, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: R.smooth_softmax_pool(p, 3, 1.3), (premask,))


def _schedule(b, h, w, dtype=D):
    return R.smooth_softmax_pool(torch.randn(b, 1, h + 4, w + 4, dtype=dtype) * 4, 5)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(5, 17), w=st.integers(5, 17), k=st.integers(1, 12),
       seed=st.integers(0, 10_000))
def test_mask_areas_hit_targets_and_masks_are_nested(b, h, w, k, seed):
    torch.manual_seed(seed)
    schedule = _schedule(b, h, w, torch.float32)
    areas = torch.sort(torch.rand(k)).values
    masks, t = ops.threshold_masks(schedule, areas, 20.0, backend="reference")
    assert masks.shape == (b, k, h, w) and t.shape == (b, k)
    assert (R.mask_area(masks) - areas).abs().max() < 1e-4
    assert (masks[:, 1:] >= masks[:, :-1] - 1e-6).all()      # larger areas contain smaller ones


def test_end_areas_are_exact_constant_masks():
    schedule = _schedule(2, 7, 9)
    masks, t = ops.threshold_masks(schedule, torch.tensor([0.0, 0.5, 1.0]), 20.0, backend="reference")
    assert (masks[:, 0] == 0).all() and (masks[:, 2] == 1).all()
    assert torch.isposinf(t[:, 0]).all() and torch.isneginf(t[:, 2]).all()


def test_warm_start_gives_the_same_thresholds():
    schedule = _schedule(2, 12, 10)
    areas = torch.linspace(0.05, 0.95, 7, dtype=D)
    _, t0 = ops.threshold_masks(schedule, areas, 20.0, tol=1e-10, backend="reference")
    _, t1 = ops.threshold_masks(schedule + 0.01, areas, 20.0, thresholds_init=t0, tol=1e-10,
                                backend="reference")
    _, t2 = ops.threshold_masks(schedule + 0.01, areas, 20.0, tol=1e-10, backend="reference")
    torch.testing.assert_close(t1, t2, atol=1e-8, rtol=0)


def test_gradcheck_implicit_threshold_gradient_equals_converged_solve():
    """Finite differences recompute the (tightly converged) solve, so they differentiate
    *through* the thresholds: the implicit gradient must match them."""
    schedule = _schedule(2, 6, 5).requires_grad_(True)
    areas = torch.tensor([0.2, 0.5, 0.8], dtype=D)
    fn = lambda s: R.threshold_masks(s, areas, 5.0, tol=1e-13, max_iter=200)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (schedule,), atol=1e-6)


def test_implicit_gradient_formula_and_detached_variant():
    schedule = _schedule(1, 8, 7).requires_grad_(True)
    areas = torch.tensor([0.3, 0.6], dtype=D)
    up = torch.randn(1, 2, 8, 7, dtype=D)
    s = 20.0
    masks, t = R.threshold_masks(schedule, areas, s)
    (g_implicit,) = torch.autograd.grad((masks * up).sum(), schedule)
    masks_d, _ = R.threshold_masks(schedule, areas, s, implicit_grad=False)
    (g_detached,) = torch.autograd.grad((masks_d * up).sum(), schedule)
    m = masks.detach()
    G = up * s * m * (1 - m)
    w = m.square() * (1 - m)
    expected = (G - w * G.sum((-2, -1), keepdim=True) / (w.sum((-2, -1), keepdim=True) + 1e-12)).sum(1, keepdim=True)
    torch.testing.assert_close(g_implicit, expected)
    torch.testing.assert_close(g_detached, G.sum(1, keepdim=True))


def test_blur_pyramid_levels():
    images = torch.randn(2, 3, 13, 10, dtype=D)
    pyr = ops.blur_pyramid(images, levels=4, max_blur=2.0, backend="reference")
    assert pyr.shape == (2, 4, 3, 13, 10)
    torch.testing.assert_close(pyr[:, -1], images)
    sigma = 2.0 * (1 - 1 / 3)                                     # level 1
    radius = math.ceil(4 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=D)
    g = torch.exp(-x * x / (2 * sigma * sigma))
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    expected = F.conv2d(images.flatten(0, 1)[:, None], kernel[None, None], padding=radius)
    torch.testing.assert_close(pyr[:, 1], expected.view(2, 3, 13, 10))


def test_pyramid_mask_ends_and_midpoints():
    images = torch.randn(2, 3, 9, 7, dtype=D)
    pyr = R.blur_pyramid(images, 8, 3.0)
    masks = torch.stack([torch.zeros(9, 7), torch.ones(9, 7), torch.full((9, 7), 0.5)])[None].to(D)
    out = ops.pyramid_mask(pyr, masks.expand(2, -1, -1, -1), backend="reference")
    torch.testing.assert_close(out[:, 0], pyr[:, 0])               # m = 0: most blurred level
    torch.testing.assert_close(out[:, 1], images)                  # m = 1: the image
    torch.testing.assert_close(out[:, 2], (pyr[:, 3] + pyr[:, 4]) / 2)  # m = 0.5: w = 3.5


def test_pyramid_mask_gradient():
    pyr = R.blur_pyramid(torch.randn(2, 3, 6, 5, dtype=D), 8, 2.0)
    # keep m (L - 1) away from integers, where the interpolation has kinks
    masks = ((torch.randint(0, 7, (2, 3, 6, 5)) + 0.2 + 0.6 * torch.rand(2, 3, 6, 5)) / 7).to(D)
    masks.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: R.pyramid_mask(pyr, m), (masks,))
    up = torch.randn(2, 3, 3, 6, 5, dtype=D)
    (g,) = torch.autograd.grad((R.pyramid_mask(pyr, masks) * up).sum(), masks)
    k = (masks.detach() * 7).floor().long()
    lvl = lambda i: torch.gather(pyr.unsqueeze(1).expand(2, 3, 8, 3, 6, 5), 2,  # noqa: E731
                                 i[:, :, None, None].expand(2, 3, 1, 3, 6, 5)).squeeze(2)
    torch.testing.assert_close(g, (7 * (lvl(k + 1) - lvl(k)) * up).sum(2))


@pytest.mark.parametrize("call", [
    lambda: ops.smooth_softmax_pool(torch.randn(1, 1, 8, 8), 4),
    lambda: ops.smooth_softmax_pool(torch.randn(1, 2, 12, 12), 3),
    lambda: ops.smooth_softmax_pool(torch.randn(1, 1, 8, 8), 7),
    lambda: ops.smooth_softmax_pool(torch.ones(1, 1, 8, 8, dtype=torch.long), 3),
    lambda: ops.threshold_masks(torch.randn(1, 1, 8, 8), [1.5], 20.0),
    lambda: ops.threshold_masks(torch.randn(1, 1, 8, 8), [0.5], 20.0, thresholds_init=torch.zeros(2, 1)),
    lambda: ops.blur_pyramid(torch.randn(3, 8, 8)),
    lambda: ops.pyramid_mask(torch.randn(1, 8, 3, 8, 8), torch.rand(2, 4, 8, 8)),
    lambda: ops.smooth_softmax_pool(torch.randn(1, 1, 8, 8), 3, backend="nope"),
])
def test_ops_reject_bad_input(call):
    with pytest.raises(ValueError):
        call()
