"""What the Triton ops launch per call, and the Python-side math they share with the reference.

Counted with ``benchmarks/speed/iteration_cost.py``'s counter (torch ops by a dispatch mode, Triton
launches by a launch hook): after its first call an op builds nothing per call (the Gaussian
taps are cached; the threshold solve's bracket and start clamp run inside its kernel), so a
warm-started solve is one launch and allocates only its ``B x K`` thresholds (no masks). The
changed ops still equal the reference in float64, gradients by gradcheck, on odd shapes with
NaN-poisoned outputs. On CPU tensors under the interpreter (``TRITON_INTERPRET=1``, conftest.py).
"""
import math

import pytest
import torch

from benchmarks.speed import iteration_cost as cost
from sas_fast import ops
from sas_fast.ops import reference as R

pytestmark = pytest.mark.skipif(ops.unavailable_reason("triton", torch.device("cpu")) is not None,
                                reason=str(ops.unavailable_reason("triton", torch.device("cpu"))))


D = torch.float64


def _count(fn):
    """``(result, counter)``: ``fn()`` run under the op counter and the Triton launch hook."""
    counter = cost.LaunchCounter()
    with cost.triton_launch_hook(counter), counter:
        result = fn()
    return result, counter


def _schedule(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return R.smooth_softmax_pool(torch.randn(b, 1, h + 4, w + 4, dtype=D, generator=g), 5)


def _sizes(schedule, thresholds, sharpness):
    return torch.sigmoid(sharpness * (schedule.flatten(2) - thresholds[..., None])).square().mean(-1)


@pytest.mark.parametrize("b,h,w,areas", [(3, 7, 11, (0.0, 0.15, 0.5, 0.85, 1.0)), (1, 9, 5, (0.4,))])
def test_warm_solve_is_one_launch_and_stores_no_masks(nan_filled_empty, b, h, w, areas):
    schedule, areas = _schedule(b, h, w), torch.tensor(areas, dtype=D)
    cold = ops.solve_thresholds(schedule, areas, 20.0, tol=1e-12, max_iter=200, backend="triton")
    torch.testing.assert_close(cold, R.solve_thresholds(schedule, areas, 20.0, tol=1e-12, max_iter=200),
                               rtol=0, atol=1e-10)
    moved = schedule + 0.05 * torch.randn(schedule.shape, dtype=D, generator=torch.Generator().manual_seed(1))
    warm, counter = _count(lambda: ops.solve_thresholds(moved, areas, 20.0, cold, tol=1e-12, max_iter=200,
                                                        backend="triton"))
    assert dict(counter.triton) == {"_solve_kernel": 1} and not counter.ops, (counter.ops, counter.triton)
    assert counter.largest_allocation == b * areas.numel()          # the thresholds; no B x K x N masks
    want = R.solve_thresholds(moved, areas, 20.0, cold, tol=1e-12, max_iter=200)
    torch.testing.assert_close(warm, want, rtol=0, atol=1e-10)
    inner = (areas > 0) & (areas < 1)
    torch.testing.assert_close(_sizes(moved, warm[:, inner], 20.0), areas[inner].expand(b, -1),
                               rtol=0, atol=1e-11)


def test_the_kernel_bracket_is_the_reference_bracket(nan_filled_empty):
    """With ``max_iter=0`` the solve returns its start clamped into the bracket: a start far below
    (above) every root gives the bracket's low (high) end, which must be the reference's
    :func:`solve_bracket`, where the area residual has the promised sign."""
    schedule, areas = _schedule(2, 8, 7, seed=3), torch.tensor([0.05, 0.3, 0.9], dtype=D)
    x = schedule.flatten(1)
    lo, hi = R.solve_bracket(x.amin(1, keepdim=True), x.amax(1, keepdim=True), R.root_area_logit(areas), 7.0)
    for start, end in ((-1e6, lo), (1e6, hi)):
        init = torch.full((2, 3), start, dtype=D)
        got = ops.solve_thresholds(schedule, areas, 7.0, init, max_iter=0, backend="triton")
        torch.testing.assert_close(got, end, rtol=0, atol=1e-12)
        torch.testing.assert_close(R.solve_thresholds(schedule, areas, 7.0, init, max_iter=0), end,
                                   rtol=0, atol=0)
    assert (_sizes(schedule, lo, 7.0) >= areas).all() and (_sizes(schedule, hi, 7.0) <= areas).all()


def test_threshold_masks_gradcheck_warm_started(nan_filled_empty):
    schedule, areas = _schedule(2, 5, 7, seed=4), torch.tensor([0.35], dtype=D)
    init = R.solve_thresholds(schedule, areas, 10.0)
    schedule.requires_grad_(True)
    masks, t = ops.threshold_masks(schedule, areas, 10.0, init, tol=1e-12, backend="triton")
    want, t_ref = R.threshold_masks(schedule, areas, 10.0, init, tol=1e-12)
    torch.testing.assert_close(t, t_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(masks, want, rtol=1e-9, atol=1e-10)
    fn = lambda s: ops.threshold_masks(s, areas, 10.0, init, tol=1e-12, backend="triton")[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (schedule,), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("window", [3, 5])
def test_smooth_softmax_pool_builds_nothing_per_call(nan_filled_empty, window):
    r = window // 2
    premask = torch.randn(2, 1, 7 + 2 * r, 6 + 2 * r, dtype=D, requires_grad=True)
    upstream = torch.randn(2, 1, 7, 6, dtype=D)
    ops.smooth_softmax_pool(premask, window, 1.5, backend="triton").backward(upstream)   # first call
    premask.grad = None

    def step():
        out = ops.smooth_softmax_pool(premask, window, 1.5, backend="triton")
        out.backward(upstream)
        return out
    out, counter = _count(step)
    assert not counter.ops and sum(counter.triton.values()) == 8, (counter.ops, counter.triton)
    torch.testing.assert_close(out, R.smooth_softmax_pool(premask, window, 1.5), rtol=1e-9, atol=1e-10)
    want = torch.autograd.grad(R.smooth_softmax_pool(premask, window, 1.5), premask, upstream)[0]
    torch.testing.assert_close(premask.grad, want, rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradcheck(lambda p: ops.smooth_softmax_pool(p, window, 1.5, backend="triton"),
                                    (premask.detach().requires_grad_(True),), fast_mode=True)


@pytest.mark.parametrize("implicit_grad,launches", [(True, 3), (False, 2)])
def test_masked_images_launches_only_its_kernels(nan_filled_empty, implicit_grad, launches):
    schedule = _schedule(2, 5, 6).requires_grad_(True)
    pyramid = R.blur_pyramid(torch.randn(2, 3, 5, 6, dtype=D), 4, 1.0)
    t = R.solve_thresholds(schedule.detach(), torch.tensor([0.2, 0.6], dtype=D), 20.0)

    upstream = torch.randn(2, 4, 3, 5, 6, dtype=D)

    def step():
        images = ops.masked_images(schedule, t, pyramid, 20.0, "both", implicit_grad, backend="triton")
        images.backward(upstream)
    _, counter = _count(step)
    assert not counter.ops and sum(counter.triton.values()) == launches, (counter.ops, counter.triton)


def test_blur_pyramid_uses_the_reference_sigmas_and_taps(nan_filled_empty):
    images = torch.randn(2, 3, 9, 7, dtype=D)
    torch.testing.assert_close(ops.blur_pyramid(images, 5, 1.7, backend="triton"),
                               R.blur_pyramid(images, 5, 1.7), rtol=1e-10, atol=1e-12)
    sigmas = [R.pyramid_blur(level, 5, 1.7) for level in range(5)]
    assert sigmas[0] == (1.7, math.ceil(6.8)) and sigmas[-1] == (0.0, 0)
    assert all(s1 > s2 for (s1, _), (s2, _) in zip(sigmas, sigmas[1:]))


def test_smoothing_taps_span_two_sigmas():
    """``smoothing_sigma = (window - 1) / 4``: the outermost taps sit at 2 sigma, where the
    Gaussian is ``exp(-2)`` of its centre."""
    for window in (3, 5, 9):
        taps = R.smoothing_taps(window, D)
        assert taps.shape == (window,) and abs(float(taps.sum()) - 1) < 1e-15
        assert R.smoothing_sigma(window) * 2 == window // 2
        torch.testing.assert_close(taps[0] / taps[window // 2], torch.tensor(math.exp(-2), dtype=D))
    assert R.smoothing_taps(1, D).tolist() == [1.0]
