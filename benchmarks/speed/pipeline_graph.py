"""The mask pipeline alone, as one CUDA graph: time per iteration, a kernel table, solve iterations.

One iteration (K masks, both modes, no model): schedule -> thresholds (warm-started) ->
insertion and deletion images (``ops.masked_images``) -> a fixed synthetic upstream gradient
-> backward to the pre-mask -> Adam. For each case (224 px B = 1 and 32 px B = 128 by default):

- ``graph_ms``: the iteration captured once in a ``torch.cuda.CUDAGraph`` and replayed, timed
  with CUDA events (median of ``--repeats`` blocks of ``--iters`` replays); on the CPU the eager
  iteration's wall time instead (``eager_ms``);
- ``solve_iterations``: how many solver iterations the warm-started solve needs after one
  iteration, per (image, area): the least ``max_iter`` at which ``ops.solve_thresholds`` reaches
  ``|r| < tol`` (histogram; the cold start too);
- ``--profile``: a ``torch.profiler`` table of three eager iterations of the first case (by
  device time), printed after the rows;
- launch counts of one whole iteration with a model that costs nothing
  (``benchmarks/speed/iteration_cost.py``).

    python -m benchmarks.speed.pipeline_graph --json out.json --profile                 # CUDA
    python -m benchmarks.speed.pipeline_graph --device cpu --backend cpp --quick         # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from benchmarks.rows import append as append_rows
from benchmarks.speed import iteration_cost
from sas_fast import ops
from sas_fast.config import SaSConfig

TOL, MAX_ITER = 1e-4, 50


class Pipeline:
    """The state of one case: pre-mask (Adam), pyramid, static warm-start thresholds, upstream gradient."""

    def __init__(self, size: int, batch: int, num_masks: int, backend: str, device: torch.device):
        g = torch.Generator().manual_seed(0)
        self.config = SaSConfig(num_masks=num_masks, backend=backend, max_blur=20 * size / 224,
                                window=41 if size >= 224 else 5)
        r = self.config.window // 2
        self.premask = torch.randn(batch, 1, size + 2 * r, size + 2 * r, generator=g).to(device).requires_grad_(True)
        images = torch.rand(batch, 3, size, size, generator=g).to(device)
        self.pyramid = ops.blur_pyramid(images, self.config.levels, self.config.max_blur, backend=backend)
        self.areas = torch.linspace(0, 1, num_masks, device=device)[1:-1]
        self.upstream = torch.randn(batch, 2 * (num_masks - 2), 3, size, size, generator=g).to(device)
        self.optimizer = torch.optim.Adam([self.premask], lr=0.05, capturable=device.type == "cuda",
                                          fused=True)
        self.thresholds = self.solve(TOL, MAX_ITER, None)

    def schedule(self) -> torch.Tensor:
        return ops.smooth_softmax_pool(self.premask, self.config.window, self.config.beta,
                                       backend=self.config.backend)

    def solve(self, tol: float, max_iter: int, init: torch.Tensor | None) -> torch.Tensor:
        return ops.solve_thresholds(self.schedule().detach(), self.areas, self.config.sharpness, init,
                                    tol, max_iter, backend=self.config.backend)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)
        schedule = self.schedule()
        t = ops.solve_thresholds(schedule, self.areas, self.config.sharpness, self.thresholds, TOL,
                                 MAX_ITER, backend=self.config.backend)
        images = ops.masked_images(schedule, t, self.pyramid, self.config.sharpness, "both",
                                   backend=self.config.backend)
        images.backward(self.upstream)
        self.optimizer.step()
        self.thresholds.copy_(t)


def solve_iterations(pipe: Pipeline, init: torch.Tensor | None) -> dict:
    """Histogram {iterations: count} of the least ``max_iter`` giving ``|r| < tol`` per (b, k)."""
    x = pipe.schedule().detach().flatten(1).unsqueeze(1).double()
    needed = torch.full(pipe.thresholds.shape, -1, dtype=torch.long, device=x.device)
    for max_iter in range(MAX_ITER + 1):
        t = pipe.solve(TOL, max_iter, init).double()
        r = torch.sigmoid(pipe.config.sharpness * (x - t.unsqueeze(-1))).square().mean(-1) - pipe.areas.double()
        needed = torch.where((needed < 0) & (r.abs() < TOL), max_iter, needed)
        if bool((needed >= 0).all()):
            break
    return dict(sorted(Counter(needed.flatten().tolist()).items()))


def time_graph(pipe: Pipeline, iters: int, repeats: int) -> float:
    """Median ms per replay of the captured iteration (CUDA events)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            pipe.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pipe.step()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def time_eager(pipe: Pipeline, iters: int) -> float:
    pipe.step()
    start = time.perf_counter()
    for _ in range(iters):
        pipe.step()
    return (time.perf_counter() - start) / iters * 1e3


def profile_table(pipe: Pipeline, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            pipe.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=30)


def launch_counts(backend: str, device: torch.device, size: int, batch: int, num_masks: int) -> dict:
    counts = iteration_cost.count_iteration(backend, size, batch, num_masks, "both", str(device))
    return {k: counts[k] for k in ("torch_ops", "triton_launches", "total", "by_name")}


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--cases", nargs="+", default=["224x1", "32x128"], help="SIZExBATCH")
    parser.add_argument("--num-masks", type=int, default=20)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run: one 16 px case, 2 iterations")
    parser.add_argument("--json")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler kernel table")
    parser.add_argument("--rows", action="store_true", help="also append the timings to the results rows "
                        "(benchmarks/rows.py)")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.num_masks, args.iters, args.repeats = ["16x2"], 6, 2, 1
    device = torch.device(args.device)
    rows, table = [], None
    for i, case in enumerate(args.cases):
        size, batch = (int(v) for v in case.split("x"))
        pipe = Pipeline(size, batch, args.num_masks, args.backend, device)
        row = {"size": size, "batch": batch, "masks": args.num_masks, "backend": args.backend,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "solve_iterations_cold": solve_iterations(pipe, None)}
        if device.type == "cuda":
            row["graph_ms"] = time_graph(pipe, args.iters, args.repeats)
        else:
            row["eager_ms"] = time_eager(pipe, args.iters)
        row["solve_iterations_warm"] = solve_iterations(pipe, pipe.thresholds.clone())
        if args.profile and i == 0:
            table = profile_table(pipe, device)
        row["launches"] = launch_counts(args.backend, device, min(size, 64), min(batch, 2), args.num_masks)
        rows.append(row)
        timing = f"graph {row['graph_ms']:.3f} ms" if "graph_ms" in row else f"eager {row['eager_ms']:.1f} ms"
        print(f"{size:4d} px B={batch:<4d} K={args.num_masks}: {timing}/iteration; solve iterations "
              f"cold {row['solve_iterations_cold']} warm {row['solve_iterations_warm']}; "
              f"{row['launches']['total']} ops + launches per iteration outside the model")
    if table is not None:
        print(f"torch.profiler, 3 eager iterations of {args.cases[0]}:\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.rows:
        append_rows("cuda" if device.type == "cuda" else "speed", [result_row(r) for r in rows])
    return rows


def result_row(r: dict) -> dict:
    """One case as a row of ``benchmarks/results/rows/`` (``benchmarks/rows.py``)."""
    timing = f"{r['graph_ms']:.3f} ms (CUDA graph)" if "graph_ms" in r else f"{r['eager_ms']:.1f} ms (eager)"
    return {"setting": f"mask pipeline alone, {r['size']} px, B = {r['batch']}, K = {r['masks']}, {r['backend']} "
                       f"on {r['device']}",
            "metric": "time per iteration; threshold solve steps cold / warm",
            "value": f"{timing}; {r['solve_iterations_cold']} / {r['solve_iterations_warm']}"}


if __name__ == "__main__":
    main()
