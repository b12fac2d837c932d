"""``ops.masked_images`` (the model's input batch straight from the schedule, masks never stored)
and ``ops.solve_thresholds`` on every backend: the images equal ``pyramid_mask`` of the masks of
``threshold_masks``; float64 gradients equal the reference's and pass gradcheck (implicit and
detached) on odd shapes; every output element is written; awkward layouts; and ``sas_step``,
which now uses them, equals the unfused composition it replaced."""
import pytest
import torch

from sas_fast import ops
from sas_fast.config import SaSConfig
from sas_fast.ops import reference as R
from sas_fast.step import Objective, StepConstants, mask_areas, mode_names, sas_step

D = torch.float64
MODES = ("both", "insertion", "deletion")


def _case(backend, *values):
    """``pytest.param(backend, *values)``, skipped where the backend cannot run on the CPU."""
    reason = ops.unavailable_reason(backend, torch.device("cpu"))
    return pytest.param(backend, *values, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


FUSED = [_case("cpp"), _case("triton")]
BACKENDS = [_case("reference")] + FUSED


def _inputs(b=2, h=7, w=10, c=3, areas=(0.0, 0.3, 0.7, 1.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    schedule = R.smooth_softmax_pool(torch.randn(b, 1, h + 4, w + 4, dtype=D, generator=g), 5)
    pyramid = R.blur_pyramid(torch.randn(b, c, h, w, dtype=D, generator=g), 5, 1.5)
    areas = torch.tensor(areas, dtype=D)
    return schedule, pyramid, areas


def _unfused(schedule, areas, pyramid, mode, implicit_grad=True):
    """What sas_step computed before masked_images: threshold_masks, then pyramid_mask per mode."""
    masks, t = R.threshold_masks(schedule, areas, 20.0, None, implicit_grad, 1e-13, 200)
    return torch.cat([R.pyramid_mask(pyramid, masks if m == "insertion" else 1 - masks)
                      for m in mode_names(mode)], dim=1), t


@pytest.mark.parametrize("backend", BACKENDS)
def test_solve_thresholds_is_the_threshold_masks_solve(backend):
    schedule, _, areas = _inputs()
    _, want = ops.threshold_masks(schedule, areas, 20.0, backend=backend)
    got = ops.solve_thresholds(schedule.requires_grad_(True), areas, 20.0, backend=backend)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    warm = ops.solve_thresholds(schedule, areas, 20.0, want, tol=1e-7, backend=backend)
    sizes = torch.sigmoid(20.0 * (schedule.flatten(2) - warm[:, 1:-1, None])).square().mean(-1)
    torch.testing.assert_close(sizes, areas[1:-1].expand(2, -1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_images_equal_pyramid_mask_of_the_masks(backend, mode, channels_last):
    schedule, pyramid, areas = _inputs()
    want, t = _unfused(schedule, areas, pyramid, mode)
    got = ops.masked_images(schedule, t, pyramid, 20.0, mode, channels_last=channels_last,
                            backend=backend)
    assert got.shape == (2, len(mode_names(mode)) * 4, 3, 7, 10)
    assert got.flatten(0, 1).is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implicit_grad", [True, False])
@pytest.mark.parametrize("b,h,w,areas", [(2, 7, 10, (0.0, 0.3, 0.7, 1.0)), (3, 9, 5, (0.45,)),
                                         (1, 6, 6, (1.0, 0.2))])
def test_gradient_matches_reference(backend, mode, implicit_grad, b, h, w, areas):
    schedule, pyramid, areas = _inputs(b, h, w, 2, areas)
    t = R.solve_thresholds(schedule, areas, 20.0, tol=1e-13, max_iter=200)
    upstream = torch.randn(b, len(mode_names(mode)) * areas.numel(), 2, h, w, dtype=D)
    grads = []
    for name in ("reference", backend):
        x = schedule.clone().requires_grad_(True)
        out = ops.masked_images(x, t, pyramid, 20.0, mode, implicit_grad, backend=name)
        grads.append(torch.autograd.grad(out, x, upstream)[0])
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", ["both", "deletion"])
def test_gradcheck(backend, mode):
    """Implicit: the true derivative of the images with the thresholds re-solved (converged);
    detached: the derivative with the thresholds held fixed."""
    schedule, pyramid, areas = _inputs(2, 5, 7, 2, (0.0, 0.35, 0.8))
    x = schedule.clone().requires_grad_(True)

    def resolved(x):                      # the solve under test elsewhere: the reference's (fast)
        t = R.solve_thresholds(x.detach(), areas, 5.0, tol=1e-14, max_iter=300)
        return ops.masked_images(x, t, pyramid, 5.0, mode, True, backend=backend)

    fast = backend == "triton"           # under the interpreter: random projections of the Jacobian
    assert torch.autograd.gradcheck(resolved, (x,), fast_mode=fast)
    t = R.solve_thresholds(schedule, areas, 5.0)
    assert torch.autograd.gradcheck(
        lambda x: ops.masked_images(x, t, pyramid, 5.0, mode, False, backend=backend), (x,), fast_mode=fast)


def _awkward(x: torch.Tensor) -> torch.Tensor:
    """The values of ``x`` in a non-contiguous layout (every other column of a wider tensor)."""
    wide = torch.full((*x.shape[:-1], 2 * x.shape[-1]), float("nan"), dtype=x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_element_written_and_awkward_layouts(backend, channels_last, nan_filled_empty):
    schedule, pyramid, areas = _inputs(2, 9, 11)
    want, t = _unfused(schedule, areas, pyramid, "both")
    upstream = torch.randn_like(want)
    leaf = schedule.clone().requires_grad_(True)
    want = R.masked_images(leaf, t, pyramid, 20.0)
    (want_grad,) = torch.autograd.grad(want, leaf, upstream)
    x = _awkward(schedule).requires_grad_(True)
    got = ops.masked_images(x, _awkward(t), _awkward(pyramid), 20.0, channels_last=channels_last,
                            backend=backend)
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cl = upstream.flatten(0, 1).contiguous(memory_format=torch.channels_last).view_as(upstream)
    for grad_out in (_awkward(upstream), cl, upstream.sum().expand_as(upstream)):
        want_grad = torch.autograd.grad(R.masked_images(leaf, t, pyramid, 20.0), leaf, grad_out)[0]
        (grad,) = torch.autograd.grad(ops.masked_images(x, t, pyramid, 20.0, backend=backend), x, grad_out)
        assert not grad.isnan().any()
        torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_bad_arguments():
    schedule, pyramid, areas = _inputs()
    t = R.solve_thresholds(schedule, areas, 20.0)
    with pytest.raises(ValueError, match="mode"):
        ops.masked_images(schedule, t, pyramid, 20.0, "sideways", backend="reference")
    with pytest.raises(ValueError, match="schedule"):
        ops.masked_images(schedule[:, :, 1:], t, pyramid, 20.0, backend="reference")
    with pytest.raises(ValueError, match="thresholds"):
        ops.masked_images(schedule, t[:1], pyramid, 20.0, backend="reference")
    with pytest.raises(ValueError, match="areas"):
        ops.solve_thresholds(schedule, [0.5, 1.5], 20.0, backend="reference")


def _old_sas_step(premask, pyramid, objective, config, areas):
    """sas_step before masked_images: masks stored, images concatenated, one leaf sliced per chunk."""
    schedule = ops.smooth_softmax_pool(premask, config.window, config.beta, backend="reference")
    masks, thresholds = ops.threshold_masks(schedule, areas, config.sharpness, None, config.implicit_grad,
                                            backend="reference", tol=config.threshold_tol)
    modes = mode_names(config.mode)
    images = torch.cat([ops.pyramid_mask(pyramid, masks if m == "insertion" else 1 - masks,
                                         backend="reference") for m in modes], dim=1).flatten(0, 1)
    b = premask.shape[0]
    rows = torch.arange(b).repeat_interleave(len(modes) * areas.numel())
    sign = torch.tensor([objective.sign[m] for m in modes], dtype=D).repeat_interleave(areas.numel()).repeat(b)
    scores = objective.scores(images, rows).double()
    (sign * scores).sum().backward()
    return (sign * scores).view(b, -1).sum(1), thresholds


@pytest.mark.parametrize("backend,mode,max_batch,implicit_grad", [
    _case(backend, *case) for backend in ("reference", "cpp", "triton")
    for case in (("both", None, True), ("deletion", 5, False), ("insertion", 4, True))
    if backend != "triton" or case[0] == "both"])               # the interpreter is slow
def test_sas_step_equals_the_unfused_step(backend, mode, max_batch, implicit_grad):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).to(D)
    images = torch.randn(2, 3, 9, 11, dtype=D)
    objective = Objective(model, images, torch.tensor([0, 2]))
    config = SaSConfig(num_masks=5, window=5, max_blur=1.5, mode=mode, max_batch=max_batch,
                       implicit_grad=implicit_grad, backend=backend, threshold_tol=1e-12)
    pyramid = R.blur_pyramid(images, config.levels, config.max_blur)
    premask = torch.randn(2, 1, 13, 15, dtype=D)
    areas = mask_areas(5, D)[1:-1]
    old, new = premask.clone().requires_grad_(True), premask.clone().requires_grad_(True)
    want_loss, want_t = _old_sas_step(old, pyramid, objective, config, areas)
    constants = StepConstants(new, objective, config)
    result = sas_step(new, pyramid, objective, config, None, constants=constants)
    torch.testing.assert_close(result.thresholds, want_t, rtol=0, atol=1e-9)
    torch.testing.assert_close(result.loss, want_loss.detach().float())     # scores are float32
    torch.testing.assert_close(new.grad, old.grad, rtol=1e-8, atol=1e-11)
    subset = areas[::2]                                      # another set of areas, same constants
    new.grad = None
    result = sas_step(new, pyramid, objective, config, result.thresholds[:, ::2], subset, constants)
    assert result.thresholds.shape == (2, 2) and set(result.scores) == set(mode_names(mode))
    old.grad = None
    want_loss, _ = _old_sas_step(old, pyramid, objective, config, subset)
    torch.testing.assert_close(result.loss, want_loss.detach().float())
    torch.testing.assert_close(new.grad, old.grad, rtol=1e-6, atol=1e-9)
