"""``sas_step``, which uses ``ops.masked_images`` (the model's input batch straight from the
schedule, masks never stored), equals the unfused composition it replaced on every backend; and
``masked_images`` / ``solve_thresholds`` reject bad arguments. The op's own properties (equal to
``pyramid_mask`` of the masks, gradients, gradcheck, layouts) are in ``test_backends.py``."""
import pytest
import torch

from sas_fast import ops
from sas_fast.config import SaSConfig
from sas_fast.ops import reference as R
from sas_fast.step import Objective, StepConstants, mask_areas, mode_names, sas_step

D = torch.float64


def _case(backend, *values):
    """``pytest.param(backend, *values)``, skipped where the backend cannot run on the CPU."""
    reason = ops.unavailable_reason(backend, torch.device("cpu"))
    return pytest.param(backend, *values, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


def _inputs(b=2, h=7, w=10, c=3, areas=(0.0, 0.3, 0.7, 1.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    schedule = R.smooth_softmax_pool(torch.randn(b, 1, h + 4, w + 4, dtype=D, generator=g), 5)
    pyramid = R.blur_pyramid(torch.randn(b, c, h, w, dtype=D, generator=g), 5, 1.5)
    areas = torch.tensor(areas, dtype=D)
    return schedule, pyramid, areas


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
