"""The dispatcher's checks (sas_fast.ops), the same for every backend: scalar parameters,
devices, mask values; and the C++ kernels' float16 / bfloat16 upcast."""
import pytest
import torch

from sas_fast import ops

BACKENDS = [b for b in ops.BACKENDS if ops.unavailable_reason(b, torch.device("cpu")) is None]
NAN, INF = float("nan"), float("inf")


def _premask():
    return torch.randn(2, 1, 14, 14)


def _schedule():
    return torch.randn(2, 1, 12, 12)


def _pyramid():
    return ops.blur_pyramid(torch.randn(2, 3, 12, 12), 4, 1.0, backend="reference")


BAD_CALLS = {
    "window=3.0": (lambda b: ops.smooth_softmax_pool(_premask(), 3.0, backend=b),
                   "window must be an odd integer >= 1, got 3.0"),
    "beta=inf": (lambda b: ops.smooth_softmax_pool(_premask(), 3, INF, backend=b),
                 "beta must be a finite number > 0, got inf"),
    "beta=0": (lambda b: ops.smooth_softmax_pool(_premask(), 3, 0.0, backend=b), "beta must be"),
    "sharpness<0": (lambda b: ops.threshold_masks(_schedule(), [0.25, 0.5], -20.0, backend=b),
                    "sharpness must be a finite number > 0, got -20.0"),
    "sharpness=inf": (lambda b: ops.threshold_masks(_schedule(), [0.5], INF, backend=b), "sharpness"),
    "max_iter=-1": (lambda b: ops.threshold_masks(_schedule(), [0.5], 20.0, max_iter=-1, backend=b),
                    "max_iter must be an integer >= 0, got -1"),
    "max_iter=2.5": (lambda b: ops.threshold_masks(_schedule(), [0.5], 20.0, max_iter=2.5, backend=b),
                     "max_iter must be an integer"),
    "tol=0": (lambda b: ops.threshold_masks(_schedule(), [0.5], 20.0, tol=0.0, backend=b), "tol must be"),
    "NaN area": (lambda b: ops.threshold_masks(_schedule(), [NAN, 0.5], 20.0, backend=b),
                 r"areas must be a non-empty list of values in \[0, 1\], got \[nan, 0.5\]"),
    "implicit_grad='no'": (lambda b: ops.threshold_masks(_schedule(), [0.5], 20.0, implicit_grad="no",
                                                         backend=b), "implicit_grad must be True or False"),
    "thresholds_init on meta": (lambda b: ops.threshold_masks(_schedule(), [0.5], 20.0,
                                                              torch.zeros(2, 1, device="meta"), backend=b),
                                "thresholds_init is on meta but schedule on cpu"),
    "max_blur=inf": (lambda b: ops.blur_pyramid(torch.randn(1, 3, 8, 8), 4, INF, backend=b),
                     "max_blur must be a finite number >= 0, got inf"),
    "max_blur<0": (lambda b: ops.blur_pyramid(torch.randn(1, 3, 8, 8), 4, -1.0, backend=b), "max_blur"),
    "levels=2.5": (lambda b: ops.blur_pyramid(torch.randn(1, 3, 8, 8), 2.5, 1.0, backend=b),
                   "levels must be an integer >= 2, got 2.5"),
    "masks > 1": (lambda b: ops.pyramid_mask(_pyramid(), torch.full((2, 1, 12, 12), 1.5), backend=b),
                  r"masks must lie in \[0, 1\], got values in \[1.5, 1.5\]"),
    "masks < 0": (lambda b: ops.pyramid_mask(_pyramid(), -torch.rand(2, 3, 12, 12) - 0.1, backend=b),
                  r"masks must lie in \[0, 1\]"),
    "NaN mask": (lambda b: ops.pyramid_mask(_pyramid(), torch.full((2, 3, 12, 12), NAN), backend=b),
                 r"masks must lie in \[0, 1\], got values in \[nan, nan\]"),
    "masks on meta": (lambda b: ops.pyramid_mask(_pyramid(), torch.rand(2, 3, 12, 12, device="meta"),
                                                 backend=b), "masks is on meta but pyramid on cpu"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_parameters_raise_for_every_backend(name, backend):
    call, message = BAD_CALLS[name]
    with pytest.raises(ValueError, match=message):
        call(backend)


def test_boundary_masks_and_numpy_integers_are_accepted():
    import numpy as np

    pyramid = _pyramid()
    masks = torch.rand(2, 3, 12, 12)
    masks[:, 0], masks[:, 1] = 0.0, 1.0
    out = ops.pyramid_mask(pyramid, masks, backend="reference")
    torch.testing.assert_close(out[:, 0], pyramid[:, 0])
    torch.testing.assert_close(out[:, 1], pyramid[:, -1])
    premask = _premask()
    torch.testing.assert_close(ops.smooth_softmax_pool(premask, np.int64(3), backend="reference"),
                               ops.smooth_softmax_pool(premask, 3, backend="reference"))


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_runs_half_precision_in_float32(dtype):
    """The C++ kernels have float32 / float64 code only: float16 / bfloat16 inputs are computed in
    float32 and returned in their own dtype, equal to the float32 result rounded to it."""
    images = torch.randn(2, 3, 12, 12).to(dtype)
    pyramid = ops.blur_pyramid(images, 4, 1.0, backend="cpp")
    assert pyramid.dtype == dtype
    assert torch.equal(pyramid, ops.blur_pyramid(images.float(), 4, 1.0, backend="cpp").to(dtype))

    premask = _premask().to(dtype).requires_grad_(True)
    schedule = ops.smooth_softmax_pool(premask, 3, backend="cpp")
    want = ops.smooth_softmax_pool(premask.detach().float(), 3, backend="cpp").to(dtype)
    assert schedule.dtype == dtype and torch.equal(schedule, want)
    masks, thresholds = ops.threshold_masks(schedule, [0.25, 0.5], 20.0, backend="cpp")
    assert masks.dtype == thresholds.dtype == dtype and masks.shape == (2, 2, 12, 12)
    out = ops.pyramid_mask(pyramid, masks, backend="cpp")
    assert out.dtype == dtype and out.shape == (2, 2, 3, 12, 12)
    out.float().sum().backward()
    assert premask.grad.dtype == dtype and torch.isfinite(premask.grad.float()).all()
    assert premask.grad.abs().sum() > 0
