"""The conformance suite: every property of every op, checked on every backend and device.

Each test runs for every ``(backend, device)`` of ``CASES`` (reference, C++ and Triton on CPU,
Triton under the interpreter; reference and Triton on CUDA, generated where a GPU is) and, where
the dtype matters, for float32 and float64. The oracle is the reference backend run in float64 on
CPU copies of the same (rounded) inputs, compared with the single tolerance table ``TOL``; it is
not compared with itself (``ORACLE_CASES``, ``NOT_THE_ORACLE``): ``test_reference.py`` checks it
against independent formulas. Properties: values and gradients (random upstream) equal the
oracle's on odd, non-square shapes with batch > 1 and K = 1; float64 ``gradcheck``; stability
for huge value ranges and shift invariance of the soft-max-pool gradient; wide-range schedules;
exact end masks; warm starts; every output element written (NaN-poisoned memory); non-contiguous
and channels-last inputs; non-contiguous, transposed and expanded upstream gradients; random
shapes through the whole pipeline; one ``sas_step``. Backend-only checks (opcheck,
``torch.compile``, sm_90 compilation, a missing extension) are in ``test_cpp.py`` and
``test_triton.py``. Shapes are small: the Triton interpreter costs ~1 ms per program instance.
"""
import pytest
import torch
import torch.nn.functional as F

from sas_fast import ops
from sas_fast.config import SaSConfig
from sas_fast.ops import reference as R
from sas_fast.step import Objective, mode_names, sas_step

F32, F64 = torch.float32, torch.float64
CUDA = torch.cuda.is_available()


def _case(backend: str, device: str):
    reason = "needs a CUDA device" if device == "cuda" and not CUDA else \
        ops.unavailable_reason(backend, torch.device(device))
    return pytest.param(backend, device, id=f"{backend}-{device}",
                        marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


#: the backends each device runs (C++ has CPU kernels only); the CUDA cases exist where a GPU does
RUNS_ON = {"cpu": ops.BACKENDS, "cuda": tuple(b for b in ops.BACKENDS if b != "cpp")}
CASES = [_case(backend, device) for device in (("cpu", "cuda") if CUDA else ("cpu",))
         for backend in RUNS_ON[device]]
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]
#: ``(backend, device, dtype)`` of the comparisons with the oracle: every case but the oracle
#: itself (the reference in float64 on CPU, checked against independent formulas in test_reference.py)
ORACLE_CASES = [pytest.param(*case.values, dtype.values[0], id=f"{case.id}-{dtype.id}", marks=case.marks)
                for case in CASES for dtype in DTYPES
                if not (case.values == ("reference", "cpu") and dtype.values[0] == F64)]
NOT_THE_ORACLE = [case for case in CASES if case.values != ("reference", "cpu")]

#: (rtol, atol) of a backend's result against the float64 oracle, by dtype and quantity:
#: ``value`` / ``grad`` of the closed-form ops, ``threshold`` / ``mask`` / ``solve_grad`` of the
#: threshold solve (converged to ``SOLVE_TOL``), ``area`` the allowed |mean m^2 - a|.
TOL = {
    F64: {"value": (1e-9, 1e-10), "grad": (1e-9, 1e-10), "threshold": (0, 1e-8), "mask": (0, 1e-8),
          "solve_grad": (1e-6, 1e-7), "area": 1.1e-10},
    F32: {"value": (1e-4, 1e-5), "grad": (1e-4, 1e-5), "threshold": (1e-4, 1e-4), "mask": (0, 1e-3),
          "solve_grad": (1e-2, 1e-3), "area": 1.1e-5},
}
SOLVE_TOL = {F64: 1e-10, F32: 1e-5}


def _close(got, want, dtype, quantity):
    rtol, atol = TOL[dtype][quantity]
    torch.testing.assert_close(got.detach().cpu().double(), want.detach().cpu().double(), rtol=rtol, atol=atol)


def _randn(*shape, seed=0, scale=1.0):
    """A float64 CPU tensor of N(0, scale^2) values (one generator per call: device-independent)."""
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _on(x, device, dtype):
    return x.to(device=device, dtype=dtype)


def _premask(b, h, w, window, seed=0, scale=1.0):
    r = window // 2
    return _randn(b, 1, h + 2 * r, w + 2 * r, seed=seed, scale=scale)


def _schedule(b, h, w, seed=1, scale=1.0):
    return scale * R.smooth_softmax_pool(_premask(b, h, w, 5, seed), 5)


def _grad(out, leaf, upstream):
    (g,) = torch.autograd.grad(out, leaf, upstream)
    return g


def _run(call, backend, inputs, upstream):
    """``call(backend, *inputs)`` (the first output if a tuple) and its gradient for ``upstream``
    w.r.t. ``inputs[0]``, which becomes a leaf."""
    leaf = inputs[0].detach().clone().requires_grad_(True)
    out = call(backend, leaf, *inputs[1:])
    first = out[0] if isinstance(out, tuple) else out
    return out, _grad(first, leaf, upstream)


def _oracle(call, inputs, upstream):
    """:func:`_run` on the reference backend, float64 CPU copies of the (rounded) inputs."""
    inputs = [x.detach().cpu().double() if isinstance(x, torch.Tensor) else x for x in inputs]
    return _run(call, "reference", inputs, upstream.cpu().double())


def _awkward(x: torch.Tensor) -> torch.Tensor:
    """The values of ``x`` in a non-contiguous layout (every other column of a NaN-filled wider tensor)."""
    wide = torch.full((*x.shape[:-1], 2 * x.shape[-1]), float("nan"), dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    out = wide[..., ::2]
    assert not out.is_contiguous()
    return out


def _upstream_layouts(upstream: torch.Tensor):
    """``upstream``'s values non-contiguous and transposed, and an expanded (stride-0) gradient."""
    transposed = upstream.transpose(-1, -2).contiguous().transpose(-1, -2)
    return {"awkward": _awkward(upstream), "transposed": transposed,
            "expanded": upstream[..., :1, :1].expand_as(upstream)}


def _gradcheck(fn, x, backend):
    """float64 gradcheck: the full Jacobian for the C++ kernels; random projections of it for the
    interpreted Triton kernels and the reference, where one Jacobian column costs ~10-100 ms."""
    return torch.autograd.gradcheck(fn, (x,), atol=1e-6, fast_mode=backend != "cpp")


# ---------------------------------------------------------------- smooth_softmax_pool

def _ssp(beta):
    return lambda backend, p, window: ops.smooth_softmax_pool(p, window, beta, backend=backend)


@pytest.mark.parametrize("backend,device,dtype", ORACLE_CASES)
@pytest.mark.parametrize("b,h,w,window,beta", [(2, 9, 12, 5, 1.0), (3, 7, 9, 7, 0.5), (1, 3, 8, 3, 2.5),
                                               (2, 5, 5, 5, 1.5), (1, 6, 5, 1, 1.0)])
def test_smooth_softmax_pool_equals_reference(backend, device, dtype, b, h, w, window, beta):
    """Odd, non-square shapes, images as small as the window (both mirror images of a pixel in
    one window), window 1 (no smoothing)."""
    premask = _on(_premask(b, h, w, window, scale=3.0), device, dtype)
    upstream = _on(_randn(b, 1, h, w, seed=9), device, dtype)
    got, grad = _run(_ssp(beta), backend, [premask, window], upstream)
    want, want_grad = _oracle(_ssp(beta), [premask, window], upstream)
    assert got.shape == (b, 1, h, w) and got.dtype == dtype and got.device.type == device
    _close(got, want, dtype, "value")
    _close(grad, want_grad, dtype, "grad")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("b,h,w,window", [(2, 5, 6, 3), (1, 5, 5, 5)])
def test_smooth_softmax_pool_gradcheck(backend, device, b, h, w, window):
    premask = _on(_premask(b, h, w, window), device, F64).requires_grad_(True)
    assert _gradcheck(lambda p: ops.smooth_softmax_pool(p, window, 1.25, backend=backend), premask, backend)


@pytest.mark.parametrize("backend,device,dtype", ORACLE_CASES)
@pytest.mark.parametrize("scale", [1e4, 1e8, 1e30])
def test_softmax_pool_stable_for_huge_ranges(backend, device, dtype, scale):
    """Values far beyond exp's range (exp overflows at 89 in float32, 710 in float64): the output
    is the window maximum of the smoothed premask, the gradient finite, and the oracle's where
    the values' own rounding ``scale x eps`` stays below 1e-3, up to 10 times that rounding."""
    premask = _on(_premask(2, 9, 10, 5, scale=scale), device, dtype)
    upstream = _on(_randn(2, 1, 9, 10, seed=9), device, dtype)
    got, grad = _run(_ssp(1.0), backend, [premask, 5], upstream)
    smooth = R.gaussian_smooth(premask.detach().cpu().double(), 5)
    window_max = F.max_pool2d(F.pad(smooth, (2, 2, 2, 2), mode="reflect"), 5, 1)
    _close(got, window_max, dtype, "value")
    assert torch.isfinite(grad).all()
    rounding = scale * torch.finfo(dtype).eps
    if rounding < 1e-3:
        rtol, atol = TOL[dtype]["grad"]
        torch.testing.assert_close(grad.cpu().double(), _oracle(_ssp(1.0), [premask, 5], upstream)[1],
                                   rtol=rtol, atol=atol + 10 * rounding)


@pytest.mark.parametrize("backend,device", CASES)
def test_smooth_softmax_pool_gradient_is_shift_invariant(backend, device):
    """out(p + c) = out(p) + c, so the gradient must not change with a huge offset c: the
    backward uses only local differences (no cancellation of large terms)."""
    premask = _on(_premask(2, 8, 9, 5), device, F64)
    upstream = _on(_randn(2, 1, 8, 9, seed=9), device, F64)
    _, g0 = _run(_ssp(2.0), backend, [premask, 5], upstream)
    _, g1 = _run(_ssp(2.0), backend, [premask + 1e8, 5], upstream)
    torch.testing.assert_close(g1, g0, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- threshold_masks, solve_thresholds

def _masks(implicit_grad, tol, init=None):
    return lambda backend, x, areas: ops.threshold_masks(x, areas, 20.0, init, implicit_grad, tol, 200,
                                                         backend=backend)


@pytest.mark.parametrize("backend,device,dtype", ORACLE_CASES)
@pytest.mark.parametrize("b,h,w,areas,scale,implicit_grad", [
    (2, 7, 9, [0.0, 0.1, 0.5, 0.93, 1.0], 1.0, True), (1, 9, 12, [0.3], 100.0, True),  # K = 1, wide
    (3, 7, 6, [1.0, 0.1, 0.0, 0.9], 1.0, False), (2, 6, 8, [0.0, 0.25, 0.75, 1.0], 100.0, False)])
def test_threshold_masks_equal_reference(backend, device, dtype, b, h, w, areas, scale, implicit_grad):
    """Thresholds and masks of the solve (the oracle's, solved to the same tolerance: on wide
    schedules the area is nearly flat in the threshold, which a tolerance on the area leaves
    loose), exact end masks (areas 0 / 1, thresholds +-inf), every area hit, and the implicit /
    detached gradient; ``scale`` 100: schedules too wide for shared exponentials."""
    x = _on(_schedule(b, h, w, scale=scale), device, dtype)
    areas = _on(torch.tensor(areas, dtype=F64), device, dtype)
    upstream = _on(_randn(b, areas.numel(), h, w, seed=9), device, dtype)
    call = _masks(implicit_grad, SOLVE_TOL[dtype])
    (masks, t), grad = _run(call, backend, [x, areas], upstream)
    (want_m, want_t), want_grad = _oracle(call, [x, areas], upstream)
    assert masks.shape == (b, areas.numel(), h, w) and t.shape == (b, areas.numel())
    assert masks.dtype == t.dtype == dtype and masks.device.type == device
    ends = (areas == 0) | (areas == 1)
    assert torch.equal(t[:, ends].cpu(), want_t[:, ends.cpu()].to(dtype))             # +inf / -inf
    assert torch.equal(masks[:, ends], (areas[ends] == 1).to(dtype).view(1, -1, 1, 1).expand_as(masks[:, ends]))
    _close(t[:, ~ends], want_t[:, ~ends.cpu()], dtype, "threshold")
    _close(masks, want_m, dtype, "mask")
    assert (R.mask_area(masks.double()) - areas.double()).abs().max() < TOL[dtype]["area"]
    _close(grad, want_grad, dtype, "solve_grad")


@pytest.mark.parametrize("backend,device", CASES)
def test_threshold_masks_warm_start(backend, device):
    x = _on(_schedule(2, 9, 10), device, F64)
    areas = _on(torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=F64), device, F64)
    _, t0 = ops.threshold_masks(x, areas, 20.0, tol=1e-10, backend=backend)
    masks, t = ops.threshold_masks(x + 0.01, areas, 20.0, thresholds_init=t0, tol=1e-10, backend=backend)
    want_m, want_t = R.threshold_masks(x.cpu() + 0.01, areas.cpu(), 20.0, t0.cpu(), tol=1e-10)
    _close(t, want_t, F64, "threshold")
    _close(masks, want_m, F64, "mask")


@pytest.mark.parametrize("backend,device", CASES)
def test_threshold_masks_implicit_gradcheck(backend, device):
    """Finite differences re-run the tightly converged solve: the implicit gradient must match."""
    x = _on(_schedule(2, 6, 5), device, F64).requires_grad_(True)
    areas = _on(torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=F64), device, F64)
    assert _gradcheck(lambda s: ops.threshold_masks(s, areas, 5.0, tol=1e-13, max_iter=200, backend=backend)[0],
                      x, backend)


@pytest.mark.parametrize("backend,device", CASES)
def test_solve_thresholds_is_the_threshold_masks_solve(backend, device):
    x = _on(_schedule(2, 7, 10), device, F64)
    areas = _on(torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64), device, F64)
    _, want = ops.threshold_masks(x, areas, 20.0, backend=backend)
    got = ops.solve_thresholds(x.clone().requires_grad_(True), areas, 20.0, backend=backend)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    warm = ops.solve_thresholds(x, areas, 20.0, want, tol=1e-7, backend=backend)
    sizes = torch.sigmoid(20.0 * (x.flatten(2) - warm[:, 1:-1, None])).square().mean(-1)
    torch.testing.assert_close(sizes, areas[1:-1].expand(2, -1), rtol=0, atol=1e-7)


# ---------------------------------------------------------------- blur_pyramid, pyramid_mask

@pytest.mark.parametrize("backend,device,dtype", ORACLE_CASES)
@pytest.mark.parametrize("levels,max_blur,shape", [(8, 2.0, (2, 3, 11, 13)), (2, 0.0, (1, 1, 9, 6)),
                                                   (5, 6.0, (1, 2, 11, 8))])
def test_blur_pyramid_equals_reference(backend, device, dtype, levels, max_blur, shape):
    images = _on(_randn(*shape), device, dtype)
    got = ops.blur_pyramid(images, levels, max_blur, backend=backend)
    assert got.shape == (shape[0], levels, *shape[1:]) and got.dtype == dtype
    _close(got, R.blur_pyramid(images.cpu().double(), levels, max_blur), dtype, "value")
    assert torch.equal(got[:, -1], images)                      # the last level is the image


def _pyramid_masks(b, k, c, h, w, levels, seed=0):
    """A pyramid and masks with values exactly 0, 1 and on the level edges ``l / (L - 1)``."""
    pyramid = R.blur_pyramid(_randn(b, c, h, w, seed=seed), levels, 1.5)
    masks = torch.rand(b, k, h, w, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    edges = torch.arange(levels, dtype=F64) / (levels - 1)
    masks.view(-1)[:levels + 2] = torch.cat([torch.tensor([0.0, 1.0], dtype=F64), edges])
    return pyramid, masks


@pytest.mark.parametrize("backend,device,dtype", ORACLE_CASES)
@pytest.mark.parametrize("b,k,c,levels", [(2, 5, 3, 8), (1, 1, 1, 2), (3, 2, 2, 4)])
def test_pyramid_mask_equals_reference(backend, device, dtype, b, k, c, levels):
    """Insertion (m) and deletion (1 - m) images, values and gradients, masks on the level edges
    (where the gradient jumps: in float32 the rounding of m (L - 1) picks the side, so the
    float32 gradient is compared off the edges)."""
    pyramid, masks = _pyramid_masks(b, k, c, 7, 10, levels)
    position = masks * (levels - 1)
    off_edge = (position - position.round()).abs() > 1e-6 if dtype == F32 else torch.ones_like(masks, dtype=bool)
    pyramid, masks = _on(pyramid, device, dtype), _on(masks, device, dtype)
    upstream = _on(_randn(b, k, c, 7, 10, seed=9), device, dtype)
    for deletion in (False, True):
        def call(name, m, p):
            return ops.pyramid_mask(p, 1 - m if deletion else m, backend=name)
        got, grad = _run(call, backend, [masks, pyramid], upstream)
        want, want_grad = _oracle(call, [masks, pyramid], upstream)
        assert got.shape == (b, k, c, 7, 10) and got.dtype == dtype
        _close(got, want, dtype, "value")
        _close(grad.cpu()[off_edge], want_grad[off_edge], dtype, "grad")


@pytest.mark.parametrize("backend,device", CASES)
def test_pyramid_mask_gradcheck(backend, device):
    pyramid = _on(R.blur_pyramid(_randn(2, 3, 5, 6), 8, 1.0), device, F64)
    # masks away from the level edges k / 7, where the interpolation has kinks
    g = torch.Generator().manual_seed(1)
    masks = (torch.randint(0, 7, (2, 2, 5, 6), generator=g) + 0.2 + 0.6 * torch.rand(2, 2, 5, 6, generator=g)) / 7
    masks = _on(masks, device, F64).requires_grad_(True)
    assert _gradcheck(lambda m: ops.pyramid_mask(pyramid, m, backend=backend), masks, backend)


# ---------------------------------------------------------------- masked_images

def _images_inputs(b, h, w, c, areas, device, dtype, seed=0):
    x = _schedule(b, h, w, seed=seed)
    pyramid = R.blur_pyramid(_randn(b, c, h, w, seed=seed + 5), 5, 1.5)
    areas = torch.tensor(areas, dtype=F64)
    t = R.solve_thresholds(x, areas, 20.0, tol=1e-13, max_iter=200)
    return _on(x, device, dtype), _on(t, device, dtype), _on(pyramid, device, dtype)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,channels_last", [("both", False), ("both", True), ("insertion", True),
                                               ("deletion", False)])
def test_masked_images_equal_pyramid_mask_of_the_masks(backend, device, dtype, mode, channels_last):
    """The fused images equal ``pyramid_mask`` of the masks of the thresholds, in the layout asked."""
    x, t, pyramid = _images_inputs(2, 7, 10, 3, (0.0, 0.3, 0.7, 1.0), device, dtype)
    got = ops.masked_images(x, t, pyramid, 20.0, mode, channels_last=channels_last, backend=backend)
    x64, t64, p64 = (v.cpu().double() for v in (x, t, pyramid))
    masks = R.masks_from_thresholds(x64, t64, 20.0)
    want = torch.cat([R.pyramid_mask(p64, masks if m == "insertion" else 1 - masks)
                      for m in mode_names(mode)], dim=1)
    assert got.shape == (2, len(mode_names(mode)) * 4, 3, 7, 10) and got.dtype == dtype
    assert got.flatten(0, 1).is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _close(got, want, dtype, "value")


@pytest.mark.parametrize("backend,device,dtype", ORACLE_CASES)
@pytest.mark.parametrize("mode,b,h,w,areas,implicit_grad", [("both", 2, 7, 10, (0.0, 0.3, 0.7, 1.0), True),
                                                            ("insertion", 3, 9, 5, (0.45,), True),
                                                            ("deletion", 1, 6, 6, (1.0, 0.2), True),
                                                            ("both", 2, 5, 8, (0.0, 0.6), False)])
def test_masked_images_gradient_equals_reference(backend, device, dtype, mode, b, h, w, areas, implicit_grad):
    x, t, pyramid = _images_inputs(b, h, w, 2, areas, device, dtype)
    upstream = _on(_randn(b, len(mode_names(mode)) * len(areas), 2, h, w, seed=9), device, dtype)

    def call(name, s, t, pyramid):
        return ops.masked_images(s, t, pyramid, 20.0, mode, implicit_grad, backend=name)
    got, grad = _run(call, backend, [x, t, pyramid], upstream)
    want, want_grad = _oracle(call, [x, t, pyramid], upstream)
    assert want_grad.abs().max() > 0
    _close(got, want, dtype, "value")
    _close(grad, want_grad, dtype, "solve_grad")


@pytest.mark.parametrize("backend,device", CASES)
def test_masked_images_gradcheck(backend, device):
    """Insertion and deletion images. Implicit: the true derivative of the images with the
    thresholds re-solved (converged); detached: the derivative with the thresholds held fixed."""
    x, _, pyramid = _images_inputs(2, 4, 5, 2, (0.0,), device, F64)
    areas = torch.tensor([0.0, 0.35, 0.8], dtype=F64, device=device)
    x = x.requires_grad_(True)

    def resolved(s):                      # the solve under test elsewhere: the reference's (fast)
        t = R.solve_thresholds(s.detach(), areas, 5.0, tol=1e-14, max_iter=300)
        return ops.masked_images(s, t, pyramid, 5.0, "both", True, backend=backend)

    assert _gradcheck(resolved, x, backend)
    t = R.solve_thresholds(x.detach(), areas, 5.0)
    assert _gradcheck(lambda s: ops.masked_images(s, t, pyramid, 5.0, "both", False, backend=backend), x,
                      backend)


# ---------------------------------------------------------------- every element written, layouts

def _check_layouts(backend, call, inputs, upstream, quantity="value"):
    """``call`` on non-contiguous copies of ``inputs`` (NaN-poisoned memory, see conftest): no NaN
    output and the oracle's values; its gradient for every upstream layout equals the oracle's."""
    awkward = [_awkward(x) if isinstance(x, torch.Tensor) else x for x in inputs]
    want, _ = _oracle(call, inputs, upstream)
    for name, grad_out in _upstream_layouts(upstream).items():
        got, grad = _run(call, backend, awkward, grad_out)
        first = got[0] if isinstance(got, tuple) else got
        assert not first.isnan().any(), "an output element was never written"
        _close(first, want[0] if isinstance(want, tuple) else want, F64, quantity)
        assert not grad.isnan().any(), f"a gradient element was never written ({name} upstream)"
        _close(grad, _oracle(call, inputs, grad_out)[1], F64, "solve_grad" if quantity == "mask" else "grad")


@pytest.mark.usefixtures("nan_filled_empty")
@pytest.mark.parametrize("backend,device", CASES)
def test_smooth_softmax_pool_layouts(backend, device):
    premask = _on(_premask(2, 9, 12, 5), device, F64)
    _check_layouts(backend, _ssp(1.0), [premask, 5], _on(_randn(2, 1, 9, 12, seed=9), device, F64))


@pytest.mark.usefixtures("nan_filled_empty")
@pytest.mark.parametrize("backend,device", CASES)
def test_threshold_masks_layouts(backend, device):
    x = _on(_schedule(2, 11, 14), device, F64)
    areas = _on(torch.tensor([0.0, 0.2, 0.55, 1.0], dtype=F64), device, F64)
    _check_layouts(backend, _masks(True, 1e-12), [x, areas], _on(_randn(2, 4, 11, 14, seed=9), device, F64),
                   quantity="mask")


@pytest.mark.usefixtures("nan_filled_empty")
@pytest.mark.parametrize("backend,device", CASES)
def test_pyramid_layouts(backend, device):
    """A channels-last image batch for the pyramid; non-contiguous pyramid and masks."""
    images = _on(_randn(2, 3, 11, 14), device, F64)
    pyramid = ops.blur_pyramid(images.contiguous(memory_format=torch.channels_last), 8, 1.5, backend=backend)
    assert not pyramid.isnan().any()
    _close(pyramid, R.blur_pyramid(images.cpu(), 8, 1.5), F64, "value")
    masks = _on(_pyramid_masks(2, 3, 3, 11, 14, 8)[1], device, F64)
    _check_layouts(backend, lambda name, m, p: ops.pyramid_mask(p, m, backend=name), [masks, pyramid],
                   _on(_randn(2, 3, 3, 11, 14, seed=9), device, F64))


@pytest.mark.usefixtures("nan_filled_empty")
@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_masked_images_layouts(backend, device, channels_last):
    """Non-contiguous schedule, thresholds and pyramid; also a channels-last upstream gradient."""
    x, t, pyramid = _images_inputs(2, 7, 9, 2, (0.0, 0.4, 1.0), device, F64)
    upstream = _on(_randn(2, 6, 2, 7, 9, seed=9), device, F64)

    def call(name, s, t, pyramid):
        return ops.masked_images(s, t, pyramid, 20.0, channels_last=channels_last, backend=name)
    _check_layouts(backend, call, [x, t, pyramid], upstream)
    cl = upstream.flatten(0, 1).contiguous(memory_format=torch.channels_last).view_as(upstream)
    _, grad = _run(call, backend, [x, t, pyramid], cl)
    _close(grad, _oracle(call, [x, t, pyramid], upstream)[1], F64, "grad")


# ---------------------------------------------------------------- random shapes, the whole step

@pytest.mark.parametrize("backend,device", NOT_THE_ORACLE)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_shapes_through_the_pipeline(backend, device, seed):
    """Random batch, odd window, image sizes from the window to 2 windows, K, channels, levels:
    schedule, masks, pyramid and images (fused and unfused) equal the oracle's, and so does the
    gradient of the images w.r.t. the pre-mask."""
    g = torch.Generator().manual_seed(100 + seed)
    b, window, k, c, levels = (int(torch.randint(lo, hi, (), generator=g))
                               for lo, hi in ((1, 4), (0, 3), (1, 5), (1, 4), (2, 9)))
    window = 2 * window + 1
    h, w = (int(torch.randint(window, 2 * window + 2, (), generator=g)) for _ in range(2))
    premask = _on(_premask(b, h, w, window, seed=seed), device, F64)
    images = _on(_randn(b, c, h, w, seed=seed + 3), device, F64)
    areas = torch.rand(k, generator=g, dtype=F64).to(device)
    upstream = _on(_randn(b, 2 * k, c, h, w, seed=9), device, F64)

    def call(name, p, images, areas):
        schedule = ops.smooth_softmax_pool(p, window, 1.0, backend=name)
        masks, t = ops.threshold_masks(schedule, areas, 20.0, tol=1e-12, max_iter=200, backend=name)
        pyramid = ops.blur_pyramid(images, levels, 2.0, backend=name)
        unfused = torch.cat([ops.pyramid_mask(pyramid, masks, backend=name),
                             ops.pyramid_mask(pyramid, 1 - masks, backend=name)], dim=1)
        fused = ops.masked_images(schedule, t, pyramid, 20.0, backend=name)
        return fused, unfused, schedule, masks, pyramid

    got, grad = _run(call, backend, [premask, images, areas], upstream)
    want, want_grad = _oracle(call, [premask, images, areas], upstream)
    for quantity, out, want_out in zip(("mask", "mask", "value", "mask", "value"), got, want):
        _close(out, want_out, F64, quantity)
    _close(grad, want_grad, F64, "solve_grad")


@pytest.mark.parametrize("backend,device", [case for case in CASES if case.values[0] != "reference"])
def test_sas_step_equals_the_reference_backend(backend, device):
    """One optimisation step (schedule, masks, insertion and deletion images, model, backward)
    gives the reference backend's pre-mask gradient and thresholds."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).to(device=device, dtype=F64)
    images = _on(_randn(2, 3, 11, 12), device, F64)
    objective = Objective(model, images, torch.tensor([0, 2], device=device))
    grads, thresholds = [], []
    for name in ("reference", backend):
        config = SaSConfig(num_masks=6, window=5, max_blur=1.5, backend=name, threshold_tol=1e-10)
        pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend=name)
        premask = _on(_premask(2, 11, 12, 5), device, F64).requires_grad_(True)
        result = sas_step(premask, pyramid, objective, config, None)
        grads.append(premask.grad)
        thresholds.append(result.thresholds)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(thresholds[1], thresholds[0], rtol=0, atol=1e-9)
