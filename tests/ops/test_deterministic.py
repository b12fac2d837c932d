"""Smooth + soft-max-pool on the fused backends: the backward has no atomics (no
``reflection_pad2d_backward``, no atomic adds), so two runs give bit-identical gradients and
the op runs under ``torch.use_deterministic_algorithms(True)`` (so does the whole mask
pipeline). The reflection fold on images as small as the window: ``test_backends.py``."""
import pytest
import torch

from sas_fast import ops


def _available(backend, device):
    reason = ops.unavailable_reason(backend, torch.device(device)) if device == "cpu" or \
        torch.cuda.is_available() else "needs a CUDA device"
    return pytest.mark.skipif(reason is not None, reason=str(reason))


CASES = [pytest.param("cpp", "cpu", marks=_available("cpp", "cpu")),
         pytest.param("triton", "cpu", marks=_available("triton", "cpu")),
         pytest.param("triton", "cuda", marks=_available("triton", "cuda"))]


@pytest.fixture
def deterministic_mode():
    """Non-deterministic CUDA kernels (``reflection_pad2d_backward``, ``index_add``) raise."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.parametrize("backend,device", CASES)
def test_smooth_softmax_pool_backward_is_bit_identical(backend, device, deterministic_mode):
    """Two forward + backward runs on the same input: equal bits (float32; on CUDA at the
    224-px size, where racing atomic adds would show)."""
    b, size, window = (4, 224, 41) if device == "cuda" else (3, 29, 7)
    r = window // 2
    g = torch.Generator().manual_seed(4)
    premask = (3 * torch.randn(b, 1, size + 2 * r, size + 5 + 2 * r, generator=g)).to(device)
    upstream = torch.randn(b, 1, size, size + 5, generator=g).to(device)
    grads = []
    for _ in range(2):
        leaf = premask.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ops.smooth_softmax_pool(leaf, window, 1.0, backend=backend),
                                      leaf, upstream)
        grads.append(grad)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().max() > 0
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("backend,device", CASES)
def test_mask_pipeline_backward_is_bit_identical(backend, device, deterministic_mode):
    """Schedule, masks, insertion and deletion images, backward to the pre-mask, twice: equal bits."""
    b, size, window, k = (2, 224, 41, 20) if device == "cuda" else (2, 21, 5, 6)
    r = window // 2
    g = torch.Generator().manual_seed(5)
    premask = torch.randn(b, 1, size + 2 * r, size + 3 + 2 * r, generator=g).to(device)
    pyramid = ops.blur_pyramid(torch.randn(b, 3, size, size + 3, generator=g).to(device), 8, 2.0,
                               backend=backend)
    areas = torch.linspace(0, 1, k, device=device)[1:-1]
    upstream = torch.randn(b, 2 * (k - 2), 3, size, size + 3, generator=g).to(device)
    grads = []
    for _ in range(2):
        leaf = premask.clone().requires_grad_(True)
        masks, _ = ops.threshold_masks(ops.smooth_softmax_pool(leaf, window, 1.0, backend=backend),
                                       areas, 20.0, backend=backend)
        images = torch.cat([ops.pyramid_mask(pyramid, masks, backend=backend),
                            ops.pyramid_mask(pyramid, 1 - masks, backend=backend)], dim=1)
        (grad,) = torch.autograd.grad(images, leaf, upstream)
        grads.append(grad)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().max() > 0
    assert torch.equal(grads[0], grads[1])
