"""Time one SaS optimisation step against the CNN work it cannot avoid, all in one process.

For each model (VGG16 at 224 px, defined here; the paper's ResNet8 at 32 px; random weights)
and batch size B it measures, in ms per iteration:

- ``cnn``: the model's forward + input gradient on the ``2 (K - 2) B`` masked images of one step
  (insertion and deletion, inner masks), the same micro-batches: the floor for any SaS step;
- ``reference``: :func:`sas_fast.step.sas_step` with ``backend="reference"`` (eager PyTorch);
- ``fused``: ``sas_step`` with ``backend="triton"`` on CUDA, ``"cpp"`` on a CPU (if built);
- ``graph`` (CUDA only): a whole iteration (``sas_step`` + Adam) replayed from a CUDA graph by
  :class:`sas_fast.iteration.IterationRunner` (``cuda_graph=True``).

It prints one table row per (model, B) with the ratios to ``cnn`` and the seconds per image of a
full run (200 iterations at 32 px, 800 at 224 px: paper section 4)::

    python -m benchmarks.speed.bench_attribute                       # CUDA: B = 1 16 128
    python -m benchmarks.speed.bench_attribute --quick               # a CPU smoke run, seconds
    python -m benchmarks.speed.bench_attribute --models resnet8 --batch 1 16 --iters 5 --json out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from benchmarks.common import sync
from benchmarks.rows import append as append_rows
from torch import nn

from sas_fast import ops
from sas_fast.config import SaSConfig
from sas_fast.iteration import WARMUP, IterationRunner
from sas_fast.models.cifar import resnet8, vgg16_features
from sas_fast.ops import reference
from sas_fast.precision import cpu_capability
from sas_fast.step import Objective, input_channels_last, sas_step

RUN_ITERATIONS = {32: 200, 224: 800}


def vgg16(classes: int = 1000) -> nn.Sequential:
    """ImageNet VGG16 (the VGG-16 features, 4096-4096-classes head), 224 x 224 input."""
    return nn.Sequential(*vgg16_features(), nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(512 * 49, 4096),
                         nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                         nn.Linear(4096, classes))


MODELS = {"vgg16": (vgg16, 224), "resnet8": (resnet8, 32)}


def _time_ms(fn, device, warmup: int, iters: int) -> float:
    """Median wall time of ``fn()`` in ms over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _fused_backend(device: torch.device, requested: str | None) -> str | None:
    name = requested or ("triton" if device.type == "cuda" else "cpp")
    return name if ops.unavailable_reason(name, device) is None else None


def bench(model_name: str, size: int, b: int, precision: str, args, device: torch.device) -> dict:
    build, _ = MODELS[model_name]
    torch.manual_seed(0)
    model = build().to(device).eval().requires_grad_(False)
    bf16 = precision == "bf16"
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    images = torch.randn(b, 3, size, size, device=device)
    target = torch.zeros(b, dtype=torch.long, device=device)
    max_batch = args.max_batch or (256 if model_name == "vgg16" else 1024)
    base = SaSConfig(num_masks=args.num_masks, max_batch=max_batch, precision=precision).resolved(size, size)
    r = base.window // 2
    n_images = 2 * (args.num_masks - 2) * b
    row = {"model": model_name, "px": size, "B": b, "precision": precision, "images": n_images}

    masked = torch.rand(n_images, 3, size, size, device=device)
    rows = torch.arange(b, device=device).repeat_interleave(n_images // b)

    channels_last = input_channels_last(base, device)      # the step's layout

    def cnn():
        for start in range(0, n_images, max_batch):
            x = masked[start:start + max_batch].requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                x_in = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                score = model(x_in).float().gather(1, target[rows[start:start + max_batch]].unsqueeze(1))
            score.sum().backward()

    row["cnn"] = _time_ms(cnn, device, args.warmup, args.iters)

    objective = Objective(model, images, target)
    pyramid = reference.blur_pyramid(images, base.levels, base.max_blur)
    fused = _fused_backend(device, args.fused_backend)
    row["fused_backend"] = fused
    for label, backend in (("reference", "reference"), ("fused", fused)):
        if backend is None:
            row[label] = None
            continue
        config = dataclasses.replace(base, backend=backend)
        premask = torch.randn(b, 1, size + 2 * r, size + 2 * r, device=device, requires_grad=True)
        state = {"thresholds": None}

        def step():
            premask.grad = None
            result = sas_step(premask, pyramid, objective, config, state["thresholds"])
            state["thresholds"] = result.thresholds

        row[label] = _time_ms(step, device, args.warmup, args.iters)

    row["graph"] = None
    if fused == "triton" and device.type == "cuda":
        config = dataclasses.replace(base, backend="triton", cuda_graph=True)
        premask = torch.randn(b, 1, size + 2 * r, size + 2 * r, device=device, requires_grad=True)
        runner = IterationRunner(premask, pyramid, objective, config)
        for _ in range(WARMUP + 1):     # eager warm-up, then the capture
            runner()
        row["graph"] = _time_ms(runner, device, args.warmup, args.iters)
    return row


def _table(rows: list) -> str:
    cols = [("model", 8), ("px", 4), ("B", 4), ("prec", 4), ("images", 6), ("cnn ms", 9), ("ref ms", 9),
            ("fused ms", 9), ("graph ms", 9), ("ref/cnn", 8), ("fused/cnn", 9), ("graph/cnn", 9),
            ("ref/fused", 9), ("s/img ref", 9), ("s/img fused", 11), ("s/img graph", 11), ("fused", 6)]
    head = " ".join(f"{name:>{w}}" for name, w in cols)
    lines = [head, "-" * len(head)]

    def num(v, digits):
        return "n/a" if v is None else f"{v:.{digits}f}"

    for r in rows:
        iters = RUN_ITERATIONS.get(r["px"], 200)
        ratio = lambda a, c: None if a is None or c is None else a / c  # noqa: E731
        per_image = lambda ms: None if ms is None else ms * iters / 1e3 / r["B"]  # noqa: E731
        cells = [r["model"], r["px"], r["B"], r["precision"], r["images"], num(r["cnn"], 1),
                 num(r["reference"], 1), num(r["fused"], 1), num(r["graph"], 2),
                 num(ratio(r["reference"], r["cnn"]), 2), num(ratio(r["fused"], r["cnn"]), 2),
                 num(ratio(r["graph"], r["cnn"]), 2), num(ratio(r["reference"], r["fused"]), 2),
                 num(per_image(r["reference"]), 3), num(per_image(r["fused"]), 3),
                 num(per_image(r["graph"]), 3), r["fused_backend"] or "-"]
        lines.append(" ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)))
    lines.append(f"s/img: seconds per image of a full run ({RUN_ITERATIONS[32]} iterations at 32 px, "
                 f"{RUN_ITERATIONS[224]} at 224 px), from the per-iteration time.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet8", "vgg16"])
    parser.add_argument("--batch", nargs="+", type=int, default=None,
                        help="batch sizes (default: 1 16 128 on CUDA, 1 on a CPU)")
    parser.add_argument("--num-masks", type=int, default=20, help="K, the end masks included (paper: 20)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 5 CUDA, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (Triton compiles)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="masked images per model call (default 256 for VGG16, 1024 for ResNet8)")
    parser.add_argument("--vgg-size", type=int, default=224, help="VGG16 input size")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                        help="model precision(s): bf16 = autocast + channels-last (masks stay fp32)")
    parser.add_argument("--fused-backend", choices=("triton", "cpp"), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: B = 1, K = 4, VGG16 at 64 px, 1 warm-up, 1 iteration")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--rows", action="store_true", help="also append the rows to the results rows "
                        "(benchmarks/rows.py)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        args.batch, args.num_masks, args.warmup, args.iters = args.batch or [1], 4, 1, 1
        args.vgg_size = min(args.vgg_size, 64)
    args.batch = args.batch or ([1, 16, 128] if device.type == "cuda" else [1])
    args.iters = args.iters or (5 if device.type == "cuda" else 2)
    rows = []
    for name in args.models:
        size = args.vgg_size if name == "vgg16" else MODELS[name][1]
        for b in args.batch:
            for precision in args.precision:
                rows.append(bench(name, size, b, precision, args, device))
                print(f"done {name} {size}px B={b} {precision}: {rows[-1]}", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    capability = cpu_capability()
    print(f"\ndevice: {name}, CPU capability {capability}, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}, K = {args.num_masks}, median of {args.iters}")
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "cpu_capability": capability, "threads": torch.get_num_threads(),
                       "rows": rows}, f, indent=1)
    if args.rows:
        append_rows("speed", [result_row(r, args.num_masks) for r in rows])


def result_row(r: dict, num_masks: int) -> dict:
    """One measurement as a row of ``benchmarks/results/rows/speed.jsonl`` (``benchmarks/rows.py``)."""
    step = r["graph"] if r["graph"] is not None else r["fused"]
    return {"setting": f"{r['model']}, {r['px']} px, B = {r['B']}, {r['precision']}, K = {num_masks}",
            "metric": "one SaS step: the CNN's work alone / the whole step with the fused ops"
                      + (" from a CUDA graph" if r["graph"] is not None else f" ({r['fused_backend']})"),
            "value": f"{r['cnn']:.1f} / {step:.1f} ms (x {step / r['cnn']:.2f})"}


if __name__ == "__main__":
    main()
