"""What one SaS iteration costs outside the model: torch ops and Triton launches, peak memory.

Torch ops are counted by a ``TorchDispatchMode``: every op that reaches the dispatcher from
Python and returns or writes a tensor (the C++ backend's fused ops count once each), and every
``.item()``-style copy to the host (``_local_scalar_dense``); view ops, which launch nothing, are
counted apart, and so are allocations (``empty``: no kernel either), and ops returning no tensor (``promote_types``, profiler records) not at all.
Triton launches are counted by a hook on the launch path of compiled and interpreted kernels
(``JITFunction.run`` / ``InterpretedFunction.run``, warm-up calls excluded; the interpreter's
own tensor copies inside a launch are not counted), with the programs each launch's grid holds
(``triton_programs``; under the interpreter ``--cuda-blocks`` gives the grids of the CUDA block
sizes, e.g. ``--backend triton --cuda-blocks --size 224 --batch 1`` and ``--size 32 --batch 128``;
``launch_shapes``: the fewest programs of one launch and the warps of each kernel;
``under_filled_h200``: the kernels with a launch that neither fills an H200's 132 multiprocessors nor
runs >= 8 warps with <= 256 elements per thread per pass).
The model's forward
and backward are left out: hooks pause the count from the model's input to its output, and in the
backward from the gradient of its output to the gradient of its input.

Peak memory (CPU): the rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) over one iteration; run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
freed buffers go back to the system at once. On CUDA: ``torch.cuda.max_memory_allocated``.

    python -m benchmarks.speed.iteration_cost --backend cpp --size 32 --batch 2     # CPU
    python -m benchmarks.speed.iteration_cost --backend triton --device cuda        # GPU
    MALLOC_MMAP_THRESHOLD_=65536 python -m benchmarks.speed.iteration_cost --memory --batch 128

prints one JSON object (of the second iteration, the first warm-started one).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
from collections import Counter
from contextlib import contextmanager, nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sas_fast import ops
from benchmarks.rows import append as append_rows
from sas_fast.config import SaSConfig
from sas_fast.iteration import IterationRunner
from sas_fast.step import Objective


class LaunchCounter(TorchDispatchMode):
    """Counts torch ops (``ops``: kernels; ``views`` and ``allocations`` apart) and Triton
    launches (``triton``) and their programs (``programs``) by name while active and not
    ``paused``; ``largest_allocation``: the most elements one allocation asked for."""

    ALLOCATIONS = ("aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty")

    def __init__(self):
        super().__init__()
        self.ops, self.views, self.allocations, self.triton = Counter(), Counter(), Counter(), Counter()
        self.programs = Counter()
        self.launch_shapes = {}          # kernel name -> (fewest programs of one launch, most warps)
        self.largest_allocation = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused and (func is torch.ops.aten._local_scalar_dense.default or func._schema.is_mutable
                                or any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(out))):
            name = str(func.overloadpacket)
            kind = self.views if func.is_view else self.allocations if name in self.ALLOCATIONS else self.ops
            kind[name] += 1
            if kind is self.allocations:
                self.largest_allocation = max([self.largest_allocation] + [
                    leaf.numel() for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)])
        return out

    def count_launch(self, name: str, programs: int = 1, warps: int = 4) -> None:
        if not self.paused:
            self.triton[name] += 1
            self.programs[name] += programs
            fewest, most = self.launch_shapes.get(name, (programs, warps))
            self.launch_shapes[name] = (min(fewest, programs), max(most, warps))

    def summary(self) -> dict:
        return {"torch_ops": sum(self.ops.values()), "triton_launches": sum(self.triton.values()),
                "total": sum(self.ops.values()) + sum(self.triton.values()),
                "views": sum(self.views.values()), "allocations": sum(self.allocations.values()),
                "largest_allocation": self.largest_allocation, "by_name": dict(self.ops + self.triton),
                "triton_programs": sum(self.programs.values()), "programs_by_name": dict(self.programs),
                "launch_shapes": {name: {"programs": p, "warps": w} for name, (p, w) in self.launch_shapes.items()}}


def under_filled(summary: dict, pixels: int, sms: int = 132, elements_per_thread: int = 256) -> list:
    """Kernels with a launch that neither fills ``sms`` multiprocessors (>= ``sms`` programs) nor
    runs >= 8 warps per program with <= ``elements_per_thread`` elements per thread per pass over
    ``pixels`` (the GPU target at B = 1)."""
    return sorted(name for name, shape in summary["launch_shapes"].items()
                  if shape["programs"] < sms and not (
                      shape["warps"] >= 8 and pixels <= shape["warps"] * 32 * elements_per_thread))


@contextmanager
def triton_launch_hook(counter: LaunchCounter):
    """Calls ``counter.count_launch(kernel name, programs in its grid)`` on every Triton launch
    (compiled or interpreted)."""
    classes = []
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
        classes = [JITFunction, InterpretedFunction]
    except ImportError:
        pass
    originals = [cls.run for cls in classes]

    def wrap(run):
        def counted(self, *args, grid, warmup, **kwargs):
            if warmup:
                return run(self, *args, grid=grid, warmup=warmup, **kwargs)
            shape = grid(kwargs) if callable(grid) else grid
            counter.count_launch(getattr(self.fn, "__name__", "triton kernel"), math.prod(shape),
                                 kwargs.get("num_warps", 4))
            paused, counter.paused = counter.paused, True
            try:
                return run(self, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                counter.paused = paused
        return counted

    for cls, run in zip(classes, originals):
        cls.run = wrap(run)
    try:
        yield
    finally:
        for cls, run in zip(classes, originals):
            cls.run = run


@contextmanager
def model_excluded(model: torch.nn.Module, counter: LaunchCounter):
    """Pauses ``counter`` inside ``model``'s forward and the backward through it."""

    def pause(*_):
        counter.paused = True

    def resume(*_):
        counter.paused = False

    def before(module, args):
        pause()
        for x in args:
            if isinstance(x, torch.Tensor) and x.requires_grad:
                x.register_hook(resume)

    def after(module, args, output):
        resume()
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(pause)

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def free_model(channels: int, size: int, classes: int = 10) -> torch.nn.Module:
    """A model that costs (almost) nothing: one linear layer on the flattened image."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * size * size, classes))


def make_runner(backend: str = "cpp", size: int = 32, batch: int = 2, num_masks: int = 20,
                mode: str = "both", device: str = "cpu", model: torch.nn.Module | None = None):
    """``(runner, model)``: an :class:`IterationRunner` on random images and the model it calls
    (default :func:`free_model`), after its first (cold-started) iteration."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    model = (model or free_model(3, size)).to(device).eval()
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    config = SaSConfig(num_masks=num_masks, window=5, max_blur=20 * size / 224, mode=mode,
                       backend=backend)
    r = config.window // 2
    premask = torch.randn(batch, 1, size + 2 * r, size + 2 * r, generator=generator).to(device)
    premask.requires_grad_(True)
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend=backend)
    objective = Objective(model, images, torch.zeros(batch, dtype=torch.long, device=device))
    runner = IterationRunner(premask, pyramid, objective, config)
    runner()
    return runner, model


def count_iteration(*args, **kwargs) -> dict:
    """Counts (:meth:`LaunchCounter.summary`) of the second iteration of :func:`make_runner`'s run."""
    runner, model = make_runner(*args, **kwargs)
    counter = LaunchCounter()
    with model_excluded(model, counter), triton_launch_hook(counter), counter:
        runner()
    return counter.summary()


def _resident(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def peak_memory(*args, **kwargs) -> dict:
    """Bytes the second iteration of :func:`make_runner`'s run needs above what was held before it."""
    runner, _ = make_runner(*args, **kwargs)
    device = runner.premask.device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        runner()
        torch.cuda.synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before, "how": "cuda allocator"}
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")                                     # VmHWM := VmRSS
    before = _resident("VmRSS")
    runner()
    return {"peak_bytes": _resident("VmHWM") - before, "how": "VmHWM - VmRSS"}


def result_row(counts: dict, size: int, batch: int) -> dict:
    """Launch shapes as a row of ``benchmarks/results/rows/cuda.jsonl`` (``benchmarks/rows.py``)."""
    shapes = counts["launch_shapes"]
    wide = [s["programs"] for s in shapes.values() if s["warps"] == 4]
    narrow = {n: s for n, s in shapes.items() if s["warps"] > 4}
    missed = counts["under_filled_h200"]
    return {"setting": f"one iteration outside the model, {size} px, B = {batch}, CUDA block sizes",
            "metric": "launches, programs, launches under-filling an H200",
            "value": f"{counts['triton_launches']} launches, {counts['triton_programs']:,} programs; kernels of "
                     f"4 warps >= {min(wide):,} programs"
                     + "".join(f", {n.strip('_')} {s['programs']:,} programs x {s['warps']} warps"
                               for n, s in sorted(narrow.items()))
                     + (f"; under-filled: {', '.join(missed)}" if missed else "; none under-filled")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-masks", type=int, default=20)
    parser.add_argument("--mode", default="both")
    parser.add_argument("--memory", action="store_true", help="peak memory instead of launch counts")
    parser.add_argument("--cuda-blocks", action="store_true",
                        help="Triton launches take the CUDA block sizes on any device (interpreter)")
    parser.add_argument("--rows", action="store_true",
                        help="with --cuda-blocks: also append the launch shapes to the results rows (benchmarks/rows.py)")
    args = parser.parse_args(argv)
    measure = peak_memory if args.memory else count_iteration
    blocks = nullcontext()
    if args.cuda_blocks:
        from sas_fast.ops.triton.launch import cuda_block_sizes
        blocks = cuda_block_sizes()
    with blocks:
        result = measure(args.backend, args.size, args.batch, args.num_masks, args.mode, args.device)
    if args.cuda_blocks and not args.memory:
        result["under_filled_h200"] = under_filled(result, args.size * args.size)
        if args.rows:
            append_rows("cuda", [result_row(result, args.size, args.batch)])
    print(json.dumps(result, indent=1, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
