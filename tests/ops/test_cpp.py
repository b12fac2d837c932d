"""What only the C++ CPU kernels (``csrc/``, ``backend="cpp"``) have: ``torch.library.opcheck``
of every operator, a ``torch.compile`` smoke test, dispatch, the import without the extension,
and the same bits from every instruction set the kernels are compiled for. Their values and gradients against the reference, on every layout,
are in the conformance suite ``test_backends.py``. Skipped only if the extension is not built.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sas_fast import ops
from sas_fast.ops import cpp
from sas_fast.ops import reference as R

REASON = cpp.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"C++ extension not built: {REASON}")

D = torch.float64
SAS = torch.ops.sas_fast if REASON is None else None


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|."""
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


# ---------------------------------------------------------------- operators, compile, dispatch

def _opcheck_cases():
    g = torch.Generator().manual_seed(0)
    premask = torch.randn(2, 1, 11, 12, dtype=D, generator=g)
    out, smoothed, stats = SAS.smooth_softmax_pool(premask, 5, 1.0)
    schedule = out.detach()
    areas = torch.tensor([0.0, 0.4, 0.8, 1.0], dtype=D)
    masks, thresholds = SAS.threshold_masks(schedule, areas, 20.0, None, True, 1e-4, 50)
    pyramid = SAS.blur_pyramid(torch.randn(2, 3, 7, 8, dtype=D, generator=g), 4, 2.0)
    mask3 = torch.rand(2, 3, 7, 8, dtype=D, generator=g)
    grad = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    with_grad = [
        (SAS.smooth_softmax_pool, (grad(premask), 5, 1.0)),
        (SAS.threshold_masks, (grad(schedule), areas, 20.0, None, True, 1e-4, 50)),
        (SAS.threshold_masks, (grad(schedule), areas, 20.0, thresholds.nan_to_num(0.0), False, 1e-4, 50)),
        (SAS.pyramid_mask, (pyramid, grad(mask3))),
        (SAS.masked_images, (grad(mask3[:, :1]), thresholds, pyramid, 20.0, True, True, True, False)),
        (SAS.masked_images, (grad(mask3[:, :1]), thresholds, pyramid, 20.0, False, True, False, True)),
    ]
    no_grad = [
        (SAS.smooth_softmax_pool_backward, (torch.randn_like(out), smoothed, out, stats, 5, 1.0)),
        (SAS.threshold_masks_backward, (torch.randn_like(masks), masks, thresholds, 20.0, True)),
        (SAS.blur_pyramid, (torch.randn(2, 3, 7, 8, dtype=D), 4, 2.0)),
        (SAS.pyramid_mask_backward, (torch.randn(2, 3, 3, 7, 8, dtype=D), pyramid, mask3)),
        (SAS.masked_images_backward, (torch.randn(2, 8, 3, 7, 8, dtype=D), mask3[:, :1], thresholds,
                                      pyramid, 20.0, True, True, True)),
    ]
    return with_grad, no_grad


def test_opcheck_every_operator():
    with_grad, no_grad = _opcheck_cases()
    for op, args in with_grad:
        torch.library.opcheck(op, args)
    for op, args in no_grad:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor",
                                                    "test_aot_dispatch_dynamic"))
    checked = {op._qualified_op_name for op, _ in with_grad + no_grad}
    assert checked == {f"sas_fast::{name}" for name in dir(SAS) if not name.startswith("_")
                       and isinstance(getattr(SAS, name), torch._ops.OpOverloadPacket)}


def test_torch_compile_pipeline():
    """The whole mask pipeline, forward and backward, under torch.compile (tiny shapes). The
    aot_eager backend traces the operators through their fake kernels and autograd formulas, as
    inductor does, without its ~20-40 s C++ code generation."""
    window, areas = 3, torch.tensor([0.25, 0.5, 0.75])
    pyramid = cpp.blur_pyramid(torch.randn(1, 3, 8, 9), 4, 1.5)

    def pipeline(premask):
        schedule = cpp.smooth_softmax_pool(premask, window, 1.0)
        masks, _ = cpp.threshold_masks(schedule, areas, 20.0, None, True, 1e-4, 50)
        return cpp.pyramid_mask(pyramid, masks).sum() - cpp.pyramid_mask(pyramid, 1 - masks).sum()

    premask = torch.randn(1, 1, 10, 11, requires_grad=True)
    want = pipeline(premask)
    (g_want,) = torch.autograd.grad(want, premask)
    got = torch.compile(pipeline, fullgraph=True, backend="aot_eager")(premask)
    (g_got,) = torch.autograd.grad(got, premask)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


def test_dispatch_and_unavailable_reason():
    assert ops.unavailable_reason("cpp", torch.device("cpu")) is None
    assert "CPU" in cpp.unavailable_reason(torch.device("meta"))
    premask = torch.randn(1, 1, 12, 12, dtype=D)
    torch.testing.assert_close(ops.smooth_softmax_pool(premask, 5, backend="cpp"),
                               cpp.smooth_softmax_pool(premask, 5), rtol=0, atol=0)


def test_without_extension_imports_and_auto_warns_once():
    """A fresh process that cannot find sas_fast._C: the module imports, says why it cannot run,
    and backend="auto" falls back to the reference on CPU with one warning."""
    code = textwrap.dedent("""
        import importlib.util, os, warnings
        find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "sas_fast._C" else find_spec(name, *a)
        os.environ.pop("TRITON_INTERPRET", None)
        import torch
        from sas_fast import ops
        from sas_fast.ops import cpp
        assert "not built" in cpp.unavailable_reason(torch.device("cpu"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backends = [ops.resolve_backend("auto", torch.device("cpu")) for _ in range(3)]
        assert backends == ["reference"] * 3, backends
        assert len(caught) == 1 and "reference" in str(caught[0].message), caught
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


ISA_HASH = textwrap.dedent("""
    import hashlib, numpy as np, torch
    from sas_fast.ops import cpp
    digest = hashlib.sha256()
    for dtype in (torch.float32, torch.float64):
        rng = np.random.default_rng(0)   # not torch.randn, whose own values depend on the capability
        normal = lambda *shape: torch.from_numpy(rng.standard_normal(shape)).to(dtype)
        premask = normal(2, 1, 27, 38).requires_grad_(True)
        images = normal(2, 3, 23, 34)
        areas = torch.linspace(0, 1, 7, dtype=dtype)
        schedule = cpp.smooth_softmax_pool(premask, 5, 1.0)
        masks, thresholds = cpp.threshold_masks(schedule, areas, 20.0, None, True, 1e-4, 50)
        pyramid = cpp.blur_pyramid(images, 8, 3.0)
        fused = cpp.masked_images(schedule, thresholds, pyramid, 20.0, ("insertion", "deletion"), True, False)
        masked = cpp.pyramid_mask(pyramid, masks)
        weights = normal(*masked.shape)
        (grad,) = torch.autograd.grad((masked * weights).sum() + (fused * weights.repeat(1, 2, 1, 1, 1)).sum(), premask)
        for t in (schedule, masks, thresholds, pyramid, fused, masked, grad):
            digest.update(t.detach().contiguous().numpy().tobytes())
    print(torch.backends.cpu.get_cpu_capability(), digest.hexdigest())
""")


def test_every_instruction_set_gives_the_same_bits():
    """The kernels are compiled for x86-64 baseline, AVX2 and AVX-512 and pick the copy of
    torch's CPU capability (``ATEN_CPU_CAPABILITY`` lowers it, read once per process): every
    op's outputs and schedule gradient, float32 and float64, odd shapes, are bit-identical."""
    runs = {}
    for capability in ("default", "avx2", "avx512"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        run = subprocess.run([sys.executable, "-c", ISA_HASH], env=env, check=True, capture_output=True, text=True)
        runs[capability] = run.stdout.split()
    assert runs["default"][0] == "DEFAULT" and len({cap for cap, _ in runs.values()}) >= 2, runs
    assert len({digest for _, digest in runs.values()}) == 1, runs


# ---------------------------------------------------------------- kernel paths the small shapes miss

@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["factored", "direct"])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed-grad"])
def test_masked_images_over_several_tiles_matches_reference(scale, transposed):
    """``masked_images`` works on tiles of 1024 pixels: a 37 x 41 image (two tiles, the second
    partial) gives the reference's images and implicit gradient in float64, with the masks
    factored (``|s| (max x - min x) < 1200``) or evaluated directly (a 100x wider schedule), and
    an upstream gradient whose pixels are contiguous or not (read through a tile buffer)."""
    g = torch.Generator().manual_seed(3)
    schedule = scale * R.smooth_softmax_pool(torch.randn(2, 1, 41, 45, dtype=D, generator=g), 5)
    pyramid = R.blur_pyramid(torch.randn(2, 3, 37, 41, dtype=D, generator=g), 6, 2.0)
    thresholds = R.solve_thresholds(schedule, torch.tensor([0.0, 0.2, 0.55, 0.9], dtype=D), 20.0)
    upstream = torch.randn(2, 8, 3, 41, 37, dtype=D, generator=g)
    upstream = upstream.transpose(-1, -2) if transposed else upstream.transpose(-1, -2).contiguous()
    grads = {}
    for backend in ("cpp", "reference"):
        x = schedule.clone().requires_grad_(True)
        images = ops.masked_images(x, thresholds, pyramid, 20.0, "both", backend=backend)
        images.backward(upstream)
        grads[backend] = images.detach(), x.grad
    assert grads["reference"][1].abs().max() > 0
    for got, want in zip(grads["cpp"], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
