"""The Triton ops at CUDA block sizes under the interpreter (``cuda_block_sizes``): the interpreter
normally runs one large block per row, so the GPU's multi-block paths (several programs per row,
several BLOCK-wide passes per program, the masked tails, the cross-block partial sums of the
masked images' implicit gradient) would never run on a CPU. Here the block is the CUDA one
(divisor 1) or a 16th of it, and every image has more than two blocks of pixels; values and
gradients equal the float64 reference, and every launch is checked to use that block size."""
import pytest
import torch

from sas_fast import ops
from sas_fast.ops import reference as R

pytestmark = pytest.mark.skipif(ops.unavailable_reason("triton", torch.device("cpu")) is not None,
                                reason=str(ops.unavailable_reason("triton", torch.device("cpu"))))

D = torch.float64
#: (divisor, image size): more than 2 x the solve's 1024 // divisor pixels per image
CASES = [(1, (43, 51)), (16, (13, 11))]


@pytest.fixture
def blocks(request):
    """Runs the test's ops at the CUDA block sizes / divisor; yields the ``BLOCK`` of every launch."""
    from triton.runtime.interpreter import InterpretedFunction

    from sas_fast.ops.triton.launch import cuda_block_sizes
    launched, run = [], InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launched.append((self.fn.__name__, kwargs["BLOCK"]))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = record
    try:
        with cuda_block_sizes(request.param):
            yield launched
    finally:
        InterpretedFunction.run = run
    assert launched and all(block <= 1024 // request.param for _, block in launched), launched


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def _both(fn, *inputs):
    """``fn(backend, *leaves)`` and the gradients of its output against a random upstream, for
    the Triton backend and the reference."""
    out = {}
    for backend in ("triton", "reference"):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        value = fn(backend, *leaves)
        upstream = _randn(*value.shape, seed=7)
        out[backend] = (value.detach(), *torch.autograd.grad((value * upstream).sum(), leaves))
    return out["triton"], out["reference"]


@pytest.mark.parametrize("blocks,size", CASES, indirect=["blocks"])
@pytest.mark.parametrize("window", [5, 9])
def test_smooth_softmax_pool(blocks, size, window):
    r = window // 2
    premask = _randn(2, 1, size[0] + 2 * r, size[1] + 2 * r, seed=1)
    got, want = _both(lambda backend, x: ops.smooth_softmax_pool(x, window, 1.5, backend=backend), premask)
    for g, w in zip(got, want):
        _close(g, w)


@pytest.mark.parametrize("blocks,size", CASES, indirect=["blocks"])
@pytest.mark.parametrize("implicit_grad", [True, False])
def test_threshold_masks_and_cold_solve(blocks, size, implicit_grad):
    schedule = R.smooth_softmax_pool(_randn(2, 1, size[0] + 4, size[1] + 4, seed=2), 5)
    areas = torch.tensor([0.0, 0.05, 0.5, 0.93, 1.0], dtype=D)
    cold = ops.solve_thresholds(schedule, areas, 20.0, tol=1e-12, max_iter=200, backend="triton")
    _close(cold, R.solve_thresholds(schedule, areas, 20.0, tol=1e-12, max_iter=200))
    got, want = _both(lambda backend, x: ops.threshold_masks(x, areas, 20.0, cold, implicit_grad, tol=1e-12,
                                                             max_iter=200, backend=backend)[0], schedule)
    for g, w in zip(got, want):
        _close(g, w)


@pytest.mark.parametrize("blocks,size", CASES, indirect=["blocks"])
def test_pyramid(blocks, size):
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3), dtype=D)
    pyramid = ops.blur_pyramid(images, 4, 3.0, backend="triton")
    _close(pyramid, R.blur_pyramid(images, 4, 3.0))
    masks = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4), dtype=D)
    got, want = _both(lambda backend, m: ops.pyramid_mask(pyramid, m, backend=backend), masks)
    for g, w in zip(got, want):
        _close(g, w)


@pytest.mark.parametrize("blocks,size", CASES, indirect=["blocks"])
@pytest.mark.parametrize("mode,implicit_grad", [("both", True), ("deletion", False)])
def test_masked_images(blocks, size, mode, implicit_grad):
    schedule = R.smooth_softmax_pool(_randn(2, 1, size[0] + 4, size[1] + 4, seed=5), 5)
    areas = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=D)
    thresholds = R.solve_thresholds(schedule, areas, 20.0, tol=1e-12, max_iter=200)
    pyramid = R.blur_pyramid(torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(6), dtype=D),
                             4, 3.0)
    got, want = _both(lambda backend, x: ops.masked_images(x, thresholds, pyramid, 20.0, mode=mode,
                                                           implicit_grad=implicit_grad, backend=backend),
                      schedule)
    for g, w in zip(got, want):
        _close(g, w)


@pytest.mark.parametrize("divisor", [0, 3])
def test_block_divisor_must_be_a_power_of_two(divisor):
    from sas_fast.ops.triton.launch import cuda_block_sizes
    with pytest.raises(ValueError, match="divisor must be a power of 2"):
        with cuda_block_sizes(divisor):
            pass
