"""pytest-benchmark of each SaS op, forward + backward, for every backend available here,
against the eager reference and ``torch.compile(reference)`` in the same run.

    pytest benchmarks/speed/test_ops_bench.py --benchmark-group-by=param:case --benchmark-columns=min,median,mean

Cases: 32 x 32 (window 7) and 224 x 224 (window 41), B in {1, 16} (B = 16 at 224 only with
``SAS_BENCH_LARGE=1``: several seconds per call for the reference on a CPU), K = 20. Every result
carries in ``extra_info`` (``--benchmark-json``):

- ``cpu_capability`` and ``threads``;
- ``gb_per_s`` (every op but ``smooth_softmax_pool``, which is bound by its ``exp``):
  ``bytes_counted`` / minimum time, where ``bytes_counted`` is the size of every tensor the op's
  forward and backward read or write at their interface, each once per pass (inputs, outputs,
  incoming and outgoing gradients; the expanded gradient of a ``sum()`` is a single element and
  not counted): a lower bound of the traffic, since saved tensors re-read by a backward, scratch
  buffers and repeated reads of cached data are not counted;
- memory one more call (after the timed ones) needs above what was in use before it, in MiB:
  ``peak_tensor_mib``, the peak of tensor memory handed out by torch's allocator (CUDA:
  ``max_memory_allocated`` after ``reset_peak_memory_stats``; CPU: the running sum of the
  ``profile_memory`` events of ``torch.profiler``): the temporaries of the reference and the
  tensors the C++ ops return, not the C++ kernels' internal ``std::vector`` scratch; and, on a
  CPU, ``peak_rss_mib``, the rise of the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over its resident set before the call: it includes that scratch but
  not memory the allocator reuses without returning it to the system (so it can read 0), and is
  absent where ``clear_refs`` is not writable.
"""
import os

import pytest
import torch

from benchmarks.common import sync
from torch.profiler import ProfilerActivity, profile

from sas_fast import ops
from sas_fast.ops import reference
from sas_fast.precision import cpu_capability

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(1, 32, 7), (16, 32, 7), (1, 224, 41)]
if os.environ.get("SAS_BENCH_LARGE") == "1" or DEVICE == "cuda":
    SIZES.append((16, 224, 41))
CASES = [pytest.param(s, id=f"B{s[0]}-{s[1]}px") for s in SIZES]
BACKENDS = ["reference", "compiled", "triton", "cpp"]


@pytest.fixture(autouse=True)
def _record_cpu(benchmark):
    benchmark.extra_info.update(cpu_capability=cpu_capability(), threads=torch.get_num_threads())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _peak_tensor_mib(run) -> float:
    """Peak tensor memory (MiB) one call of ``run`` allocates above what is live before it."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:  # allocations count positive, frees negative
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def _peak_rss_mib(run) -> float | None:
    """Rise (MiB) of the peak resident set during one call of ``run`` over the resident set before."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) / 1024


def _record(benchmark, run, bytes_counted: int | None = None) -> None:
    """Times ``run``; puts the peak memory (and, given the byte count, ``gb_per_s``) into extra_info."""
    benchmark(run)
    benchmark.extra_info["peak_tensor_mib"] = _peak_tensor_mib(run)
    if DEVICE == "cpu":
        benchmark.extra_info["peak_rss_mib"] = _peak_rss_mib(run)
    if bytes_counted is not None and benchmark.stats is not None:
        benchmark.extra_info.update(bytes_counted=bytes_counted,
                                    gb_per_s=bytes_counted / benchmark.stats.stats.min / 1e9)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _fn(op: str, backend: str):
    if backend == "compiled":
        return torch.compile(getattr(reference, op), dynamic=False)
    if ops.unavailable_reason(backend, torch.device(DEVICE)) is not None:
        pytest.skip(f"backend {backend} unavailable on {DEVICE}")
    if backend == "triton" and DEVICE == "cpu":
        pytest.skip("the Triton interpreter is a correctness tool, not a benchmark target")
    return lambda *a, **kw: getattr(ops, op)(*a, backend=backend, **kw)


def _inputs(b: int, size: int, window: int, k: int = 20):
    r = window // 2
    g = torch.Generator(DEVICE).manual_seed(0)    # drawn where they are used: no host copies
    premask = torch.randn(b, 1, size + 2 * r, size + 2 * r, generator=g, device=DEVICE)
    images = torch.randn(b, 3, size, size, generator=g, device=DEVICE)
    areas = torch.linspace(0, 1, k, device=DEVICE)[1:-1]
    return premask, images, areas


def _previous_thresholds(premask: torch.Tensor, window: int, areas: torch.Tensor) -> torch.Tensor:
    """The thresholds ``B x K`` (reference solve) of the pre-mask before one Adam-sized step to
    ``premask`` (+-0.05 per pixel, signs of a smooth field): a warm start as in a SaS run."""
    b, _, hp, wp = premask.shape
    r = window // 2
    noise = torch.randn(b, 1, hp + 2 * r, wp + 2 * r, generator=torch.Generator(DEVICE).manual_seed(1),
                        device=DEVICE)
    with torch.no_grad():
        before = premask - 0.05 * reference.gaussian_smooth(noise, window).sign()
        return reference.solve_thresholds(reference.smooth_softmax_pool(before, window), areas, 20.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_smooth_softmax_pool(benchmark, case, backend):
    fn = _fn("smooth_softmax_pool", backend)
    premask, _, _ = _inputs(*case)
    premask.requires_grad_(True)

    def run():
        fn(premask, case[2], 1.0).sum().backward()
        sync(DEVICE)

    _record(benchmark, run)  # compute-bound (exp per window merge): no GB/s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("start", ["cold", "warm"])
def test_threshold_masks(benchmark, case, backend, start):
    """``cold``: quantile start (a run's first iteration); ``warm``: the thresholds of the
    schedule before one Adam-sized step of the pre-mask (+-0.05, signs of a smooth field)."""
    fn = _fn("threshold_masks", backend)
    premask, _, areas = _inputs(*case)
    schedule = reference.smooth_softmax_pool(premask, case[2]).detach().requires_grad_(True)
    init = _previous_thresholds(premask, case[2], areas) if start == "warm" else None
    weights = torch.randn(schedule.shape[0], areas.numel(), *schedule.shape[-2:], device=DEVICE)

    def run():
        masks, _ = fn(schedule, areas, 20.0, init, True, tol=1e-4, max_iter=50)
        (masks * weights).sum().backward()
        sync(DEVICE)

    # forward: schedule in, masks out; backward: masks and their gradient in, schedule's out
    _record(benchmark, run, _nbytes(schedule, weights, weights, weights, schedule))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("start", ["cold", "warm"])
def test_solve_thresholds(benchmark, case, backend, start):
    """The thresholds alone (what ``sas_step`` solves: no masks written, no gradient); ``cold``
    and ``warm`` as in :func:`test_threshold_masks`."""
    fn = _fn("solve_thresholds", backend)
    premask, _, areas = _inputs(*case)
    schedule = reference.smooth_softmax_pool(premask, case[2]).detach()
    init = _previous_thresholds(premask, case[2], areas) if start == "warm" else None

    def run():
        fn(schedule, areas, 20.0, init, tol=1e-4, max_iter=50)
        sync(DEVICE)

    thresholds = schedule.new_empty(schedule.shape[0], areas.numel())
    _record(benchmark, run, _nbytes(schedule, thresholds))  # schedule in, thresholds out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_blur_pyramid(benchmark, case, backend):
    """The blur pyramid of the images (once per SaS run, no gradient)."""
    fn = _fn("blur_pyramid", backend)
    _, images, _ = _inputs(*case)

    def run():
        fn(images, 8, 20.0 * case[1] / 224)
        sync(DEVICE)

    _record(benchmark, run, _nbytes(images) * 9)  # images in, 8 levels out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_masked_images(benchmark, case, backend):
    """The fused insertion + deletion images straight from schedule and thresholds (masks never
    stored), forward + backward with the implicit threshold gradient, against the same formula
    in eager PyTorch."""
    fn = _fn("masked_images", backend)
    premask, images, areas = _inputs(*case)
    schedule = reference.smooth_softmax_pool(premask, case[2]).detach().requires_grad_(True)
    pyramid = reference.blur_pyramid(images, 8, 20.0 * case[1] / 224)
    thresholds = reference.solve_thresholds(schedule.detach(), areas, 20.0)
    b, k, c, (h, w) = premask.shape[0], areas.numel(), images.shape[1], images.shape[-2:]
    upstream = torch.randn(b, 2 * k, c, h, w, generator=torch.Generator(DEVICE).manual_seed(2), device=DEVICE)
    mode = ("insertion", "deletion") if backend == "compiled" else "both"  # reference's / dispatcher's

    def run():
        fn(schedule, thresholds, pyramid, 20.0, mode).backward(upstream)
        sync(DEVICE)

    # schedule, thresholds and pyramid in, images out; images' gradient in, schedule's out
    _record(benchmark, run, _nbytes(schedule, thresholds, pyramid, upstream, upstream, schedule))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_pyramid_mask(benchmark, case, backend):
    fn = _fn("pyramid_mask", backend)
    _, images, areas = _inputs(*case)
    pyramid = reference.blur_pyramid(images, 8, 20.0 * case[1] / 224)
    masks = torch.rand(images.shape[0], areas.numel(), *images.shape[-2:], device=DEVICE,
                       requires_grad=True)

    def run():
        (fn(pyramid, masks).sum() + fn(pyramid, 1 - masks).sum()).backward()
        sync(DEVICE)

    # per call: forward pyramid + masks in, images out; backward pyramid + masks in, mask grad out
    out = pyramid.new_empty(masks.shape[0], masks.shape[1], *pyramid.shape[2:])
    _record(benchmark, run, 2 * _nbytes(pyramid, masks, out, pyramid, masks, masks))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_mask_pipeline(benchmark, case, backend):
    """Everything but the CNN, forward + backward: schedule, masks, insertion + deletion images."""
    fns = {op: _fn(op, backend) for op in ("smooth_softmax_pool", "threshold_masks", "pyramid_mask")}
    premask, images, areas = _inputs(*case)
    premask.requires_grad_(True)
    pyramid = reference.blur_pyramid(images, 8, 20.0 * case[1] / 224)

    def run():
        schedule = fns["smooth_softmax_pool"](premask, case[2], 1.0)
        masks, _ = fns["threshold_masks"](schedule, areas, 20.0, None, True, tol=1e-4, max_iter=50)
        out = fns["pyramid_mask"](pyramid, masks).sum() - fns["pyramid_mask"](pyramid, 1 - masks).sum()
        out.backward()
        sync(DEVICE)

    # the three ops' interface tensors: pre-mask and schedule (smooth_softmax_pool, both passes),
    # then those counted by test_threshold_masks and test_pyramid_mask
    b, k, (h, w) = premask.shape[0], areas.numel(), images.shape[-2:]
    schedule, masks = images.new_empty(b, 1, h, w), images.new_empty(b, k, h, w)
    images_out = images.new_empty(b, k, *images.shape[1:])
    _record(benchmark, run, 2 * _nbytes(premask, schedule)
            + _nbytes(schedule, masks, masks, masks, schedule)
            + 2 * _nbytes(pyramid, masks, images_out, pyramid, masks, masks))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_step_pipeline(benchmark, case, backend):
    """The ops one SaS iteration runs (``sas_step``), forward + backward, the model replaced by a
    fixed random upstream gradient of the images' shape: schedule, thresholds warm-started from
    those of the pre-mask one Adam-sized step before, insertion + deletion images (mode "both")."""
    fns = {op: _fn(op, backend) for op in ("smooth_softmax_pool", "solve_thresholds", "masked_images")}
    premask, images, areas = _inputs(*case)
    premask.requires_grad_(True)
    pyramid = reference.blur_pyramid(images, 8, 20.0 * case[1] / 224)
    warm = _previous_thresholds(premask, case[2], areas)
    b, k, c, (h, w) = premask.shape[0], areas.numel(), images.shape[1], images.shape[-2:]
    upstream = torch.randn(b, 2 * k, c, h, w, generator=torch.Generator(DEVICE).manual_seed(2), device=DEVICE)
    mode = ("insertion", "deletion") if backend == "compiled" else "both"  # reference's / dispatcher's

    def run():
        schedule = fns["smooth_softmax_pool"](premask, case[2], 1.0)
        thresholds = fns["solve_thresholds"](schedule.detach(), areas, 20.0, warm, tol=1e-4, max_iter=50)
        fns["masked_images"](schedule, thresholds, pyramid, 20.0, mode).backward(upstream)
        sync(DEVICE)

    # pre-mask and schedule (smooth_softmax_pool, both passes); schedule in, thresholds out (solve);
    # schedule, thresholds and pyramid in, images out; images' gradient in, schedule's out
    schedule = images.new_empty(b, 1, h, w)
    _record(benchmark, run, 2 * _nbytes(premask, schedule) + _nbytes(schedule, warm, warm)
            + _nbytes(schedule, warm, pyramid, upstream, upstream, schedule))
