"""The C++ CPU kernels (``csrc/``, ``backend="cpp"``) against the reference: values and
gradients for random upstream gradients (float64: max relative error <= 1e-6, thresholds
<= 1e-4), float64 gradchecks, ``torch.library.opcheck`` of every operator, a
``torch.compile`` smoke test and numerical stability. Skipped only if the extension is not built.
"""
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


# ---------------------------------------------------------------- smooth_softmax_pool

@pytest.mark.parametrize("dtype,tol", [(D, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("b,h,w,window,beta", [(2, 13, 17, 5, 1.0), (1, 9, 12, 7, 2.5),
                                               (3, 20, 11, 3, 1.0), (1, 7, 9, 7, 0.5), (2, 5, 6, 1, 1.0)])
def test_smooth_softmax_pool_matches_reference(dtype, tol, b, h, w, window, beta):
    r = window // 2
    premask = torch.randn(b, 1, h + 2 * r, w + 2 * r, dtype=dtype, requires_grad=True)
    want = R.smooth_softmax_pool(premask, window, beta)
    got = cpp.smooth_softmax_pool(premask, window, beta)
    assert got.shape == (b, 1, h, w) and got.dtype == dtype
    assert rel_err(got, want) <= tol
    upstream = torch.randn_like(want)
    (g_want,) = torch.autograd.grad(want, premask, upstream)
    (g_got,) = torch.autograd.grad(got, premask, upstream)
    assert rel_err(g_got, g_want) <= tol


@pytest.mark.parametrize("scale", [1e4, 1e8])
def test_softmax_pool_stable_for_huge_ranges(scale):
    """Values of +-1e4 (exp overflows at 710) and beyond: finite, exact, and the window max."""
    premask = (torch.randn(2, 1, 15, 14, dtype=D) * scale).requires_grad_(True)
    window, beta = 5, 1.0
    got = cpp.smooth_softmax_pool(premask, window, beta)
    assert torch.isfinite(got).all()
    smoothed = R.gaussian_smooth(premask.detach(), window)
    window_max = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(smoothed, (2, 2, 2, 2), mode="reflect"), window, stride=1)
    assert rel_err(got.detach(), window_max) <= 1e-12      # softmax of huge values = hard max
    upstream = torch.randn_like(got)
    (g_got,) = torch.autograd.grad(got, premask, upstream)
    (g_want,) = torch.autograd.grad(R.smooth_softmax_pool(premask, window, beta), premask, upstream)
    assert torch.isfinite(g_got).all()
    assert rel_err(g_got, g_want) <= 1e-6


def test_gradcheck_smooth_softmax_pool():
    premask = torch.randn(2, 1, 10, 11, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: cpp.smooth_softmax_pool(p, 5, 1.5), (premask,))


# ---------------------------------------------------------------- threshold_masks

AREAS = [torch.tensor([0.0, 0.1, 0.5, 0.93, 1.0]), torch.tensor([0.3]),
         torch.linspace(0, 1, 7)[1:-1]]


@pytest.mark.parametrize("implicit_grad", [True, False])
@pytest.mark.parametrize("b,h,w,areas", [(2, 13, 17, AREAS[0]), (1, 9, 12, AREAS[1]),
                                         (3, 20, 11, AREAS[2])])
@pytest.mark.parametrize("scale", [1.0, 100.0])   # 100: the range too wide for shared exponentials
def test_threshold_masks_matches_reference(implicit_grad, b, h, w, areas, scale):
    schedule = (scale * R.smooth_softmax_pool(torch.randn(b, 1, h + 2, w + 2, dtype=D), 3))
    schedule.requires_grad_(True)
    areas = areas.to(D)
    m_want, t_want = R.threshold_masks(schedule, areas, 20.0, None, implicit_grad)
    m_got, t_got = cpp.threshold_masks(schedule, areas, 20.0, None, implicit_grad)
    assert m_got.shape == (b, areas.numel(), h, w) and t_got.shape == (b, areas.numel())
    inner = (areas > 0) & (areas < 1)
    assert torch.equal(t_got[:, ~inner], t_want[:, ~inner])             # +inf / -inf
    assert (t_got[:, inner] - t_want[:, inner]).abs().max() <= 1e-4
    assert torch.equal(m_got[:, ~inner], (areas[~inner] >= 1).to(D).view(1, -1, 1, 1).expand(b, -1, h, w))
    assert rel_err(m_got, m_want) <= 1e-6
    upstream = torch.randn_like(m_want)
    (g_want,) = torch.autograd.grad(m_want, schedule, upstream)
    (g_got,) = torch.autograd.grad(m_got, schedule, upstream)
    assert rel_err(g_got, g_want) <= 1e-6


def test_threshold_masks_warm_start_and_float32():
    schedule = R.smooth_softmax_pool(torch.randn(2, 1, 19, 23, dtype=D), 5)
    areas = torch.linspace(0, 1, 9, dtype=D)[1:-1]
    _, t0 = R.threshold_masks(schedule, areas, 20.0)
    init = t0 + 0.05 * torch.randn_like(t0)
    _, t_want = R.threshold_masks(schedule, areas, 20.0, init)
    _, t_got = cpp.threshold_masks(schedule, areas, 20.0, init)
    assert (t_got - t_want).abs().max() <= 1e-4
    _, t32 = cpp.threshold_masks(schedule.float(), areas.float(), 20.0)
    _, t32_want = R.threshold_masks(schedule.float(), areas.float(), 20.0)
    assert t32.dtype == torch.float32 and (t32 - t32_want).abs().max() <= 1e-4


def test_gradcheck_threshold_masks_implicit_gradient():
    """With a converged solve (tol 1e-13) the implicit gradient is the true derivative."""
    schedule = R.smooth_softmax_pool(torch.randn(2, 1, 9, 10, dtype=D), 3).requires_grad_(True)
    areas = torch.tensor([0.0, 0.2, 0.6, 1.0], dtype=D)
    assert torch.autograd.gradcheck(
        lambda x: cpp.threshold_masks(x, areas, 5.0, None, True, 1e-13, 200)[0], (schedule,))


# ---------------------------------------------------------------- blur pyramid, pyramid_mask

@pytest.mark.parametrize("dtype,tol", [(D, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("levels,max_blur,shape", [(8, 2.5, (2, 3, 13, 17)), (2, 0.0, (1, 1, 9, 6)),
                                                   (5, 6.0, (1, 2, 11, 8))])
def test_blur_pyramid_matches_reference(dtype, tol, levels, max_blur, shape):
    images = torch.randn(*shape, dtype=dtype)
    got = cpp.blur_pyramid(images, levels, max_blur)
    assert got.shape == (shape[0], levels, *shape[1:])
    assert rel_err(got, R.blur_pyramid(images, levels, max_blur)) <= tol
    assert torch.equal(got[:, -1], images)


@pytest.mark.parametrize("dtype,tol", [(D, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("b,k,c,levels", [(2, 5, 3, 8), (1, 1, 1, 2), (3, 2, 2, 4)])
def test_pyramid_mask_matches_reference(dtype, tol, b, k, c, levels):
    h, w = 7, 10
    pyramid = R.blur_pyramid(torch.randn(b, c, h, w, dtype=dtype), levels, 2.0)
    masks = torch.rand(b, k, h, w, dtype=dtype)
    masks.view(-1)[:4] = torch.tensor([0.0, 1.0, 1 / (levels - 1), 1 - 1 / (levels - 1)])  # level edges
    masks.requires_grad_(True)
    for m in (masks, 1 - masks):                  # insertion and deletion images
        want, got = R.pyramid_mask(pyramid, m), cpp.pyramid_mask(pyramid, m)
        assert got.shape == (b, k, c, h, w)
        assert rel_err(got, want) <= tol
        upstream = torch.randn_like(want)
        (g_want,) = torch.autograd.grad(want, masks, upstream)
        (g_got,) = torch.autograd.grad(got, masks, upstream)
        assert rel_err(g_got, g_want) <= tol
    (g_sum,) = torch.autograd.grad(cpp.pyramid_mask(pyramid, masks).sum(), masks)   # expanded grad
    (g_sum_want,) = torch.autograd.grad(R.pyramid_mask(pyramid, masks).sum(), masks)
    assert rel_err(g_sum, g_sum_want) <= tol
    upstream = torch.randn(b, k, c, w, h, dtype=dtype).transpose(-1, -2)         # transposed grad
    (g_t,) = torch.autograd.grad(cpp.pyramid_mask(pyramid, masks), masks, upstream)
    (g_t_want,) = torch.autograd.grad(R.pyramid_mask(pyramid, masks), masks, upstream)
    assert rel_err(g_t, g_t_want) <= tol


def test_gradcheck_pyramid_mask():
    pyramid = R.blur_pyramid(torch.randn(2, 3, 6, 7, dtype=D), 8, 2.0)
    # keep masks away from the level boundaries k / 7, where the interpolation has kinks
    masks = ((torch.randint(0, 7, (2, 3, 6, 7)) + 0.2 + 0.6 * torch.rand(2, 3, 6, 7)) / 7).to(D)
    masks.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: cpp.pyramid_mask(pyramid, m), (masks,))


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
