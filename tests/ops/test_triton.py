"""What only the Triton kernels have: ``unavailable_reason``, compilation for sm_90 without a GPU,
and (on a GPU) the whole pipeline at the paper's sizes. Their values and gradients against the
reference, on every layout and dtype, interpreted on CPU and compiled on CUDA, are in the
conformance suite ``test_backends.py`` (``TRITON_INTERPRET=0 pytest tests/ops`` on a GPU
machine, see benchmarks/speed/gpu_check.sh).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sas_fast import ops
from sas_fast.ops import reference as R

CUDA = torch.cuda.is_available()


def _premask(b, h, w, window, dtype, device, seed=0):
    r = window // 2
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(b, 1, h + 2 * r, w + 2 * r, generator=g, dtype=torch.float64)
    return p.to(device=device, dtype=dtype).requires_grad_(True)


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

FLOATS = {"beta", "s", "tol", "eps"}
CONSTEXPRS = {"BLOCK": 512, "LEVELS": 8, "IMPLICIT": True, "WINDOW": 5, "C": 3}
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
    # the images and the gradient follow the thresholds, which agree to 1e-3 only (each solve stops
    # at its own point under the area tolerance): compared by relative error in norm, in which a
    # doubled or halved gradient is off by 0.5-1
    relative = lambda got, want: ((got - want).norm() / want.norm()).item()  # noqa: E731
    assert relative(tri[4], ref[4]) < 5e-3
    assert torch.isfinite(tri[5]).all() and relative(tri[5], ref[5]) < 3e-2
