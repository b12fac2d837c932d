"""The Levenberg-Marquardt threshold solve (Marquardt damping, bracket safeguard) on every
backend: never stalls from a cold start (random schedules with flat stretches, areas up to
0.999) and needs at most 3 steps when warm-started after one optimisation step of the pre-mask."""
import pytest
import torch

from sas_fast import ops
from sas_fast.ops import reference as R

D = torch.float64
BACKENDS = ["reference"] + [pytest.param(name, marks=pytest.mark.skipif(
    ops.unavailable_reason(name, torch.device("cpu")) is not None,
    reason=str(ops.unavailable_reason(name, torch.device("cpu"))))) for name in ("cpp", "triton")]


def _stress_batch(b, h, w, g):
    """``b`` random ``1 x h x w`` schedules of five kinds, scales 1e-3..1e3: smooth, quantised
    (flat stretches of r), constant, two values (a wide flat stretch between), sparse spikes."""
    out = []
    for i in range(b):
        scale = 10 ** (6 * torch.rand((), generator=g, dtype=D) - 3)
        noise = torch.randn(1, 1, h + 4, w + 4, generator=g, dtype=D)
        kind = i % 5
        if kind == 0:
            x = R.smooth_softmax_pool(noise, 5)[0]
        elif kind == 1:
            x = noise[0, :, 2:-2, 2:-2].mul(2).round()
        elif kind == 2:
            x = torch.full((1, h, w), noise[0, 0, 0, 0].item(), dtype=D)
        elif kind == 3:
            x = (noise[0, :, 2:-2, 2:-2] > noise[0, 0, 0, 0]).to(D)
        else:
            x = (noise[0, :, 2:-2, 2:-2] > 1.5).to(D) * noise[0, :, 2:-2, 2:-2]
        out.append(scale * x)
    return torch.stack(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cold_start_stress_sweep_reaches_every_area(backend):
    """300 random schedules (5 shapes x 60), 8 areas each in (0, 0.999], sharpness 5..80; the
    Triton interpreter (~0.1 s per (b, k) program here) gets the first 5 (one of each kind) per shape."""
    g = torch.Generator().manual_seed(12)
    for h, w, sharpness in [(5, 7, 5.0), (9, 6, 20.0), (13, 11, 80.0), (16, 16, 20.0), (7, 23, 40.0)]:
        schedule = _stress_batch(60, h, w, g)[:5 if backend == "triton" else None]
        areas = torch.cat([torch.tensor([1e-3, 0.999], dtype=D),
                           0.998 * torch.rand(6, generator=g, dtype=D) + 1e-3])
        masks, t = ops.threshold_masks(schedule, areas, sharpness, backend=backend)
        assert torch.isfinite(t).all()
        err = (R.mask_area(masks) - areas).abs()
        assert err.max() < 1e-4, f"{h}x{w}, s={sharpness}: worst area error {err.max():.2e}"


def _after_one_step(size, window, kind, seed, dtype):
    """A schedule before and after one Adam-sized step (+-0.05 per pixel) of a random pre-mask:
    ``iid`` random signs, ``grad`` the signs of a gradient through the ops (spatially coherent,
    the schedule moves by up to 0.05), ``shift`` +0.05 everywhere."""
    g = torch.Generator().manual_seed(seed)
    r = window // 2
    premask = torch.randn(2, 1, size + 2 * r, size + 2 * r, generator=g, dtype=D)
    areas = torch.linspace(0, 1, 20, dtype=D)[1:-1]
    if kind == "iid":
        step = 0.05 * torch.randn(premask.shape, generator=g, dtype=D).sign()
    elif kind == "grad":
        leaf = premask.clone().requires_grad_(True)
        masks, _ = R.threshold_masks(R.smooth_softmax_pool(leaf, window), areas, 20.0)
        upstream = R.gaussian_smooth(torch.randn(2, 18, size + 2 * r, size + 2 * r, generator=g, dtype=D),
                                     window)
        (masks * upstream).sum().backward()
        step = -0.05 * leaf.grad.sign()
    else:
        step = torch.full_like(premask, 0.05)
    before = R.smooth_softmax_pool(premask, window)
    _, t0 = R.threshold_masks(before, areas, 20.0)
    after = R.smooth_softmax_pool(premask + step, window)
    return after.to(dtype), areas.to(dtype), t0.to(dtype)


@pytest.mark.parametrize("size,window", [(32, 5), (64, 11)])
@pytest.mark.parametrize("kind", ["iid", "grad", "shift"])
def test_reference_warm_start_takes_at_most_three_steps(size, window, kind):
    schedule, areas, t0 = _after_one_step(size, window, kind, 0, D)
    t, steps = R.solve_thresholds(schedule, areas, 20.0, t0, return_iterations=True)
    assert steps.max() <= 3, f"steps per (b, k): {steps.tolist()}"
    assert steps.max() >= 1                                    # the step did move the roots
    masks = torch.sigmoid(20.0 * (schedule.flatten(2) - t.unsqueeze(-1)))      # B x K x N
    assert (masks.square().mean(-1) - areas).abs().max() < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, D])
@pytest.mark.parametrize("kind", ["iid", "grad", "shift"])
def test_warm_start_reaches_tolerance_in_three_steps(backend, dtype, kind):
    """``max_iter=3`` must already give every area within 1e-4 (one step does not)."""
    schedule, areas, t0 = _after_one_step(32, 5, kind, 1, dtype)
    masks, _ = ops.threshold_masks(schedule, areas, 20.0, t0, backend=backend, max_iter=3)
    assert (R.mask_area(masks.double()) - areas.double()).abs().max() < 1e-4
    start, _ = ops.threshold_masks(schedule, areas, 20.0, t0, backend=backend, max_iter=0)
    assert (R.mask_area(start.double()) - areas.double()).abs().max() >= 1e-4


def test_iteration_count_is_the_number_of_steps():
    """``return_iterations`` counts evaluated steps: 0 at the root, and no more than ``max_iter``."""
    schedule = R.smooth_softmax_pool(torch.randn(2, 1, 14, 13, dtype=D), 5)
    areas = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=D)
    t, steps = R.solve_thresholds(schedule, areas, 20.0, tol=1e-12, return_iterations=True)
    assert (steps[:, [0, 3]] == 0).all() and (steps[:, 1:3] >= 1).all()
    _, again = R.solve_thresholds(schedule, areas, 20.0, t, tol=1e-10, return_iterations=True)
    assert (again == 0).all()
    _, capped = R.solve_thresholds(schedule, areas, 20.0, tol=1e-300, max_iter=2, return_iterations=True)
    assert capped[:, 1:3].eq(2).all()


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_backends_take_the_reference_steps(backend):
    """After 1..6 steps (tol never met) every backend stands where the reference does: the same
    LM points, Marquardt damping and bisections. The schedules are stress cases on which undamped
    steps overshoot (|r| grows), so the damping rule is exercised, not only the Newton step."""
    g = torch.Generator().manual_seed(12)
    cases = []
    for h, w, sharpness in [(5, 7, 5.0), (9, 6, 20.0), (13, 11, 80.0)]:
        schedule = _stress_batch(60, h, w, g)[:2]
        areas = torch.cat([torch.tensor([1e-3, 0.999], dtype=D),
                           0.998 * torch.rand(6, generator=g, dtype=D) + 1e-3])
        cases.append((schedule, areas, sharpness))
    for schedule, areas, sharpness in cases:
        for max_iter in range(1, 7):
            want = R.solve_thresholds(schedule, areas, sharpness, tol=1e-300, max_iter=max_iter)
            got = ops.solve_thresholds(schedule, areas, sharpness, tol=1e-300, max_iter=max_iter,
                                       backend=backend)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_rows_solve_from_a_cold_start(backend):
    """bf16 schedules (the cold start ranks them in float32): the thresholds come back in bf16 and,
    evaluated in float64 on the same rows, give each area to within bf16's resolution of t."""
    g = torch.Generator().manual_seed(5)
    x = R.smooth_softmax_pool(torch.randn(3, 1, 36, 36, generator=g, dtype=D), 5).bfloat16()
    areas = torch.tensor([0.05, 0.3, 0.6, 0.95])
    t = ops.solve_thresholds(x, areas, 10.0, backend=backend)
    assert t.dtype == torch.bfloat16 and t.shape == (3, 4)
    rows = x.double().flatten(1)[:, None, :]
    reached = torch.sigmoid(10.0 * (rows - t.double()[..., None])).pow(2).mean(-1)
    assert torch.allclose(reached, areas.double().expand(3, -1), atol=0.03), reached
