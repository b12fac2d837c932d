"""Float scalars (``beta``, ``sharpness``, ``tol``, ``eps``) reach the float64 Triton kernels as
float64: every kernel types them ``tl.float64`` (a Python float would compile as an fp32 argument,
~1e-8 relative off in float64) and converts them to its accumulator dtype. Values with no fp32
representation (beta = 0.1 + 1e-9, sharpness = 3.3) then give the float64 reference to ~1e-12."""
import pytest
import torch

from sas_fast import ops
from sas_fast.ops import reference as R

pytestmark = pytest.mark.skipif(ops.unavailable_reason("triton", torch.device("cpu")) is not None,
                                reason=str(ops.unavailable_reason("triton", torch.device("cpu"))))

D = torch.float64
BETA, SHARPNESS = 0.1 + 1e-9, 3.3


def _launched_scalars():
    """``{(kernel, parameter)}`` of every Python float a float64 op call passes to a Triton launch."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    seen, run = set(), InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        params = JITFunction(self.fn).params              # the compiled kernel's parameter types
        seen.update((self.fn.__name__, p.name, p.annotation_type)
                    for p, value in zip(params, args) if isinstance(value, float))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = record
    try:
        g = torch.Generator().manual_seed(0)
        premask = torch.randn(2, 1, 13, 12, dtype=D, generator=g, requires_grad=True)
        schedule = ops.smooth_softmax_pool(premask, 5, BETA, backend="triton")
        masks, t = ops.threshold_masks(schedule, torch.tensor([0.2, 0.6], dtype=D), SHARPNESS,
                                       backend="triton")
        pyramid = ops.blur_pyramid(torch.rand(2, 3, 9, 8, dtype=D, generator=g), 4, 2.0, backend="triton")
        images = ops.masked_images(schedule, t, pyramid, SHARPNESS, backend="triton")
        (masks.sum() + images.sum()).backward()
    finally:
        InterpretedFunction.run = run
    return seen


def test_every_float_argument_is_typed_float64():
    seen = _launched_scalars()
    assert {kernel for kernel, _, _ in seen} >= {"_rows_forward_kernel", "_solve_kernel",
                                                  "_forward_kernel", "_implicit_kernel"}
    assert all(annotation == "fp64" for _, _, annotation in seen), sorted(seen)


def _relative(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


def test_float64_kernels_match_the_reference_with_unrepresentable_scalars():
    """The interpreter keeps a Python float argument in float64 whatever its annotation, so this
    checks the in-kernel conversion (``tl.full(.., ACC)``; ``tl.cast`` would round through fp32)
    and the arithmetic; the compiled argument type is the test above."""
    g = torch.Generator().manual_seed(3)
    premask = torch.randn(2, 1, 15, 14, dtype=D, generator=g)
    upstream = torch.randn(2, 1, 11, 10, dtype=D, generator=g)
    out = {}
    for backend in ("triton", "reference"):
        leaf = premask.clone().requires_grad_(True)
        schedule = ops.smooth_softmax_pool(leaf, 5, BETA, backend=backend)
        (schedule * upstream).sum().backward()
        out[backend] = schedule.detach(), leaf.grad
    for got, want in zip(out["triton"], out["reference"]):
        assert _relative(got, want) < 1e-12

    schedule = out["reference"][0]
    areas = torch.tensor([0.1, 0.45, 0.8], dtype=D)
    thresholds = R.solve_thresholds(schedule, areas, SHARPNESS, tol=1e-13, max_iter=200)
    weights = torch.randn(2, 3, 11, 10, dtype=D, generator=g)
    pyramid = R.blur_pyramid(torch.rand(2, 3, 11, 10, dtype=D, generator=g), 4, 2.0)
    out = {}
    for backend in ("triton", "reference"):
        leaf = schedule.clone().requires_grad_(True)
        masks, t = ops.threshold_masks(leaf, areas, SHARPNESS, thresholds, tol=1e-13, max_iter=200,
                                       backend=backend)
        images = ops.masked_images(leaf, thresholds, pyramid, SHARPNESS, backend=backend)
        grads = torch.autograd.grad((masks * weights).sum() + images.square().sum(), leaf)
        out[backend] = masks.detach(), t, images.detach(), grads[0]
    for got, want in zip(out["triton"], out["reference"]):
        assert _relative(got, want) < 1e-12
