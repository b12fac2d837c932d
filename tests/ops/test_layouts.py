"""Both fused backends (C++ and Triton) on awkward memory: every output element must be written
(uninitialised memory is NaN here), and non-contiguous or channels-last inputs and upstream
gradients give the reference's answer."""
import pytest
import torch

from sas_fast import ops
from sas_fast.ops import reference as R

D = torch.float64
BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    ops.unavailable_reason(name, torch.device("cpu")) is not None,
    reason=str(ops.unavailable_reason(name, torch.device("cpu"))))) for name in ("cpp", "triton")]


pytestmark = pytest.mark.usefixtures("nan_filled_empty")   # tests/ops/conftest.py


def _awkward(x: torch.Tensor) -> torch.Tensor:
    """The same values as ``x`` in a non-contiguous layout (every other column of a wider tensor)."""
    wide = torch.full((*x.shape[:-1], 2 * x.shape[-1]), float("nan"), dtype=x.dtype)
    wide[..., ::2] = x
    out = wide[..., ::2]
    assert not out.is_contiguous()
    return out


def _check(got, want, tol=1e-9):
    assert not got.isnan().any(), "an output element was never written"
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_smooth_softmax_pool_layouts(backend):
    premask = torch.randn(2, 1, 13, 16, dtype=D)
    upstream = torch.randn(2, 1, 9, 12, dtype=D)
    leaf = premask.clone().requires_grad_(True)
    want = R.smooth_softmax_pool(leaf, 5, 1.0)
    (want_grad,) = torch.autograd.grad(want, leaf, upstream)
    awkward = _awkward(premask).requires_grad_(True)
    got = ops.smooth_softmax_pool(awkward, 5, 1.0, backend=backend)
    _check(got, want)
    (grad,) = torch.autograd.grad(got, awkward, _awkward(upstream))
    _check(grad, want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_masks_layouts(backend):
    schedule = R.smooth_softmax_pool(torch.randn(2, 1, 15, 18, dtype=D), 5)
    areas = torch.tensor([0.0, 0.2, 0.55, 1.0], dtype=D)
    upstream = torch.randn(2, 4, 11, 14, dtype=D)
    leaf = schedule.clone().requires_grad_(True)
    want, want_t = R.threshold_masks(leaf, areas, 20.0, tol=1e-12, max_iter=100)
    (want_grad,) = torch.autograd.grad(want, leaf, upstream)
    awkward = _awkward(schedule).requires_grad_(True)
    got, t = ops.threshold_masks(awkward, areas, 20.0, backend=backend, tol=1e-12, max_iter=100)
    _check(got, want, tol=1e-7)
    torch.testing.assert_close(t, want_t, rtol=0, atol=1e-7)
    (grad,) = torch.autograd.grad(got, awkward, _awkward(upstream))
    _check(grad, want_grad, tol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pyramid_layouts(backend):
    images = torch.randn(2, 3, 11, 14, dtype=D)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    pyramid = ops.blur_pyramid(channels_last, 8, 1.5, backend=backend)
    _check(pyramid, R.blur_pyramid(images, 8, 1.5))
    masks = torch.rand(2, 3, 11, 14, dtype=D)
    upstream = torch.randn(2, 3, 3, 11, 14, dtype=D)
    leaf = masks.clone().requires_grad_(True)
    want = R.pyramid_mask(pyramid, leaf)
    (want_grad,) = torch.autograd.grad(want, leaf, upstream)
    awkward = _awkward(masks).requires_grad_(True)
    got = ops.pyramid_mask(_awkward(pyramid), awkward, backend=backend)
    _check(got, want)
    (grad,) = torch.autograd.grad(got, awkward, _awkward(upstream))
    _check(grad, want_grad)
