"""The Triton kernels against the reference, forward and backward.

On CPU tensors they run under the Triton interpreter (``TRITON_INTERPRET=1``, set by
conftest.py); the ``cuda`` parameters and the ``test_cuda_*`` tests run the compiled kernels
(``TRITON_INTERPRET=0 pytest tests/ops/test_triton.py`` on a GPU machine, see
benchmarks/gpu_check.sh). Shapes are small and odd-sized on CPU: the interpreter costs ~1 ms
per program instance.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sas_fast import ops
from sas_fast.config import SaSConfig
from sas_fast.ops import reference as R
from sas_fast.step import Objective, sas_step

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        ops.unavailable_reason("triton", torch.device("cpu")) is not None,
        reason=str(ops.unavailable_reason("triton", torch.device("cpu"))))),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device")),
]
DTYPES = [torch.float32, torch.float64]
F64 = torch.float64


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)


def _grad(out, inp, upstream):
    (g,) = torch.autograd.grad(out, inp, upstream)
    return g


def _premask(b, h, w, window, dtype, device, scale=1.0, seed=0):
    r = window // 2
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(b, 1, h + 2 * r, w + 2 * r, generator=g, dtype=F64) * scale
    return p.to(device=device, dtype=dtype).requires_grad_(True)


def _schedule(b, h, w, dtype, device, window=5, seed=1):
    p = _premask(b, h, w, window, F64, "cpu", seed=seed)
    return R.smooth_softmax_pool(p, window).detach().to(device=device, dtype=dtype)


# ---------------------------------------------------------------- smooth_softmax_pool

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,w,window,beta", [(2, 13, 17, 5, 1.0), (1, 9, 8, 3, 2.5),
                                               (3, 7, 7, 7, 0.5), (1, 6, 5, 1, 1.0)])
def test_smooth_softmax_pool_matches_reference(device, dtype, b, h, w, window, beta):
    premask = _premask(b, h, w, window, dtype, device, scale=3.0)
    got = ops.smooth_softmax_pool(premask, window, beta, backend="triton")
    want = R.smooth_softmax_pool(premask, window, beta)
    assert got.shape == (b, 1, h, w) and got.dtype == dtype
    torch.testing.assert_close(got, want, **_tol(dtype))
    upstream = torch.randn_like(want)
    torch.testing.assert_close(_grad(got, premask, upstream), _grad(want, premask, upstream),
                               **_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_smooth_softmax_pool(device):
    premask = _premask(2, 5, 6, 3, F64, device)
    assert torch.autograd.gradcheck(
        lambda p: ops.smooth_softmax_pool(p, 3, 1.25, backend="triton"), (premask,), fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_softmax_pool_stable_for_huge_ranges(device, scale):
    """Values far beyond exp's range: finite, equal to max-pooling, finite gradient."""
    premask = _premask(1, 9, 10, 5, torch.float32, device, scale=scale)
    out = ops.smooth_softmax_pool(premask, 5, 1.0, backend="triton")
    smooth = R.gaussian_smooth(premask.detach(), 5)
    maxpool = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(smooth, (2, 2, 2, 2), mode="reflect"), 5, 1)
    torch.testing.assert_close(out, maxpool, rtol=1e-5, atol=0)
    grad = _grad(out, premask, torch.randn_like(out))
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_smooth_softmax_pool_gradient_is_shift_invariant(device):
    """out(p + c) = out(p) + c, so the gradient must not change with a huge offset c: the
    backward uses only local differences (no cancellation of large terms)."""
    premask = _premask(2, 8, 9, 5, F64, device)
    shifted = (premask.detach() + 1e8).requires_grad_(True)
    upstream = torch.randn(2, 1, 8, 9, dtype=F64, device=device)
    g0 = _grad(ops.smooth_softmax_pool(premask, 5, 2.0, backend="triton"), premask, upstream)
    g1 = _grad(ops.smooth_softmax_pool(shifted, 5, 2.0, backend="triton"), shifted, upstream)
    torch.testing.assert_close(g1, g0, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- threshold_masks

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("implicit_grad", [True, False])
@pytest.mark.parametrize("b,h,w,areas", [(2, 13, 17, [0.0, 0.25, 0.5, 0.75, 1.0]),
                                         (1, 9, 11, [0.4]), (3, 7, 6, [1.0, 0.1, 0.0, 0.9])])
def test_threshold_masks_matches_reference(device, dtype, implicit_grad, b, h, w, areas):
    schedule = _schedule(b, h, w, dtype, device).requires_grad_(True)
    areas = torch.tensor(areas, dtype=dtype, device=device)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    got_m, got_t = ops.threshold_masks(schedule, areas, 20.0, None, implicit_grad, backend="triton",
                                       tol=tol)
    want_m, want_t = R.threshold_masks(schedule, areas, 20.0, None, implicit_grad, tol=tol)
    assert got_m.shape == (b, areas.numel(), h, w) and got_t.shape == (b, areas.numel())
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-9)
    torch.testing.assert_close(got_m, want_m, rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-8)
    assert (R.mask_area(got_m) - areas).abs().max() < 1.1 * tol      # 10 %: rounding of the mean
    ends = (areas == 0) | (areas == 1)
    constant = (areas[ends] == 1).to(dtype).view(1, -1, 1, 1)
    assert torch.equal(got_m[:, ends], constant.expand_as(got_m[:, ends]))
    upstream = torch.randn_like(want_m)
    grad_tol = dict(rtol=1e-2, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(_grad(got_m, schedule, upstream), _grad(want_m, schedule, upstream),
                               **grad_tol)


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_masks_warm_start(device):
    schedule = _schedule(2, 9, 10, F64, device)
    areas = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=F64, device=device)
    _, t0 = ops.threshold_masks(schedule, areas, 20.0, tol=1e-10, backend="triton")
    got_m, got_t = ops.threshold_masks(schedule + 0.01, areas, 20.0, thresholds_init=t0, tol=1e-10,
                                       backend="triton")
    want_m, want_t = R.threshold_masks(schedule + 0.01, areas, 20.0, thresholds_init=t0, tol=1e-10)
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_m, want_m, rtol=0, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_threshold_masks_implicit_gradient(device):
    """Finite differences re-run the tightly converged solve: the implicit gradient must match."""
    schedule = _schedule(1, 6, 5, F64, device).requires_grad_(True)
    areas = torch.tensor([0.3, 0.8], dtype=F64, device=device)
    def fn(s):
        return ops.threshold_masks(s, areas, 20.0, tol=1e-13, max_iter=80, backend="triton")[0]

    assert torch.autograd.gradcheck(fn, (schedule,), atol=1e-6, fast_mode=True)


# ---------------------------------------------------------------- pyramid

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels,max_blur", [(8, 2.0), (3, 0.7), (2, 0.0)])
def test_blur_pyramid_matches_reference(device, dtype, levels, max_blur):
    images = torch.randn(2, 3, 13, 17, dtype=dtype, device=device)
    got = ops.blur_pyramid(images, levels, max_blur, backend="triton")
    assert got.shape == (2, levels, 3, 13, 17)
    torch.testing.assert_close(got, R.blur_pyramid(images, levels, max_blur), **_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,k,c", [(2, 5, 3), (1, 1, 1), (3, 2, 2)])
def test_pyramid_mask_matches_reference(device, dtype, b, k, c):
    pyramid = R.blur_pyramid(torch.randn(b, c, 11, 14, dtype=dtype, device=device), 8, 1.5)
    masks = torch.rand(b, k, 11, 14, dtype=dtype, device=device)
    masks[:, :, 0] = 0.0
    masks[:, :, 1] = 1.0
    masks[:, :, 2, :8] = torch.arange(8, dtype=dtype, device=device) / 7    # exactly on the levels
    masks.requires_grad_(True)
    for m in (masks, 1 - masks):
        got, want = ops.pyramid_mask(pyramid, m, backend="triton"), R.pyramid_mask(pyramid, m)
        torch.testing.assert_close(got, want, **_tol(dtype))
        upstream = torch.randn_like(want)
        torch.testing.assert_close(_grad(got, masks, upstream), _grad(want, masks, upstream),
                                   **_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_pyramid_mask(device):
    pyramid = R.blur_pyramid(torch.randn(2, 3, 5, 6, dtype=F64, device=device), 8, 1.0)
    masks = (torch.rand(2, 2, 5, 6, dtype=F64, device=device) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: ops.pyramid_mask(pyramid, m, backend="triton"), (masks,),
                                    fast_mode=True)


# ---------------------------------------------------------------- the whole step

@pytest.mark.parametrize("device", DEVICES)
def test_sas_step_matches_reference_backend(device):
    """One optimisation step (schedule, masks, insertion and deletion images, model, backward)
    gives the same pre-mask gradient and thresholds with either backend."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).to(device=device, dtype=F64)
    images = torch.randn(2, 3, 11, 12, dtype=F64, device=device)
    objective = Objective(model, images, torch.tensor([0, 2], device=device))
    grads, thresholds = [], []
    for backend in ("reference", "triton"):
        config = SaSConfig(num_masks=6, window=5, max_blur=1.5, backend=backend, threshold_tol=1e-10)
        pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend=backend)
        premask = _premask(2, 11, 12, 5, F64, device)
        result = sas_step(premask, pyramid, objective, config, None)
        grads.append(premask.grad)
        thresholds.append(result.thresholds)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(thresholds[1], thresholds[0], rtol=0, atol=1e-9)


def test_unavailable_reason():
    from sas_fast.ops import triton as backend

    assert backend.unavailable_reason(torch.device("meta")) is not None
    if CUDA:
        assert backend.unavailable_reason(torch.device("cuda")) is None


# ---------------------------------------------------------------- compiled kernels

_COMPILE_FOR_SM90 = r"""
import importlib
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

FLOATS, CONSTEXPRS = {"beta", "s", "tol", "eps"}, {"BLOCK": 512, "LEVELS": 8, "IMPLICIT": True}
for dtype, acc in (("fp32", tl.float32), ("fp64", tl.float64)):
    for name in ("window", "smooth_softmax_pool", "threshold_masks", "pyramid"):
        module = importlib.import_module("sas_fast.ops.triton." + name)
        for kernel in (v for k, v in vars(module).items() if k.endswith("_kernel")):
            sig = {p.name: "constexpr" if p.is_constexpr else f"*{dtype}" if p.name.endswith("_ptr")
                   else "fp32" if p.name in FLOATS else "i32" for p in kernel.params}
            consts = {(i,): acc if p.name == "ACC" else CONSTEXPRS[p.name]
                      for i, p in enumerate(kernel.params) if p.is_constexpr}
            triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32))
"""


@pytest.mark.skipif(ops.unavailable_reason("triton", torch.device("cpu")) is not None and not CUDA,
                    reason="triton is not usable here")
def test_kernels_compile_for_sm90():
    """Every kernel compiles to a cubin for an H100 (sm_90), float32 and float64, without a GPU:
    catches what the lenient interpreter lets through (loop-carried dtype changes, etc.)."""
    pytest.importorskip("triton.backends.nvidia")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# ---------------------------------------------------------------- compiled kernels, realistic sizes

@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("b,size,window", [(16, 32, 7), (2, 224, 41), (3, 45, 9)])
def test_cuda_pipeline_matches_reference(b, size, window):
    """All four ops at the paper's sizes (K = 18 inner masks), float32, forward and backward."""
    device, dtype = "cuda", torch.float32
    premask = _premask(b, size, size + 3, window, dtype, device, seed=3)
    areas = torch.linspace(0, 1, 20, device=device)[1:-1]
    images = torch.randn(b, 3, size, size + 3, device=device)
    outs = {}
    for backend in ("reference", "triton"):
        sched = ops.smooth_softmax_pool(premask, window, 1.0, backend=backend)
        masks, t = ops.threshold_masks(sched, areas, 20.0, None, True, backend=backend)
        pyramid = ops.blur_pyramid(images, 8, 20.0 * size / 224, backend=backend)
        ins = ops.pyramid_mask(pyramid, masks, backend=backend)
        dels = ops.pyramid_mask(pyramid, 1 - masks, backend=backend)
        g = torch.Generator(device=device).manual_seed(0)
        loss = (ins * torch.randn(ins.shape, generator=g, device=device)).sum() \
            - (dels * torch.randn(dels.shape, generator=g, device=device)).sum()
        (grad,) = torch.autograd.grad(loss, premask)
        outs[backend] = (sched, t, masks, pyramid, ins, grad)
    ref, tri = outs["reference"], outs["triton"]
    torch.testing.assert_close(tri[0], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tri[1], ref[1], rtol=0, atol=1e-3)
    assert (R.mask_area(tri[2]) - areas).abs().max() < 1.1e-4
    torch.testing.assert_close(tri[3], ref[3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tri[4], ref[4], rtol=1e-2, atol=1e-2)
    assert torch.isfinite(tri[5]).all()
    cos = torch.nn.functional.cosine_similarity(tri[5].flatten(), ref[5].flatten(), dim=0)
    assert cos > 0.999, f"gradient direction differs: cosine {cos.item():.5f}"
