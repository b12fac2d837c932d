"""The model's input layout on the CPU: NCHW against channels-last, paired A/B of whole SaS runs.

SaS feeds the masked images to the model channels-last on the CPU in every precision (the
default ``channels_last=None``); ``nchw`` runs ``channels_last=False`` instead. Each setting
runs ``attribute`` for ``--iterations`` iterations in fp32, NCHW and channels-last in turn
(``--pairs`` pairs, order alternating, after one unrecorded run of each): the paper's ResNet8 and
VGG16 on ``--images`` CIFAR-10 test images (32 px) and the bundled EfficientNet-Lite0 on one
224-px photo. Prints seconds per iteration of each layout, their ratio (median over the pairs),
and the largest difference of the two maps (the same run up to fp32 rounding)::

    python -m benchmarks.speed.cpu_layout_ab --rows
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.paths import shared_dir
from benchmarks.rows import append as append_rows
from sas_fast import attribute
from sas_fast.models import efficientnet_lite0, load_npz_dataset, load_paper_model
from sas_fast.precision import cpu_capability


def settings(args) -> list:
    """``(name, model, images, target)`` of each timed setting."""
    images, labels = load_npz_dataset("cifar10", args.shared / "data", indices=list(range(args.images)))
    out = [(f"{arch} / CIFAR-10, 32 px, {args.images} images",
            load_paper_model(arch, "cifar10", args.shared / "models"), images, labels)
           for arch in ("resnet8", "vgg16")]
    photo = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out.append(("EfficientNet-Lite0, 224 px, 1 image", efficientnet_lite0(), photo, torch.tensor([1])))
    return out


def timed_run(model, images, target, iterations: int, layout: str) -> tuple:
    """``(seconds per iteration, map)`` of one run with the model input in ``layout``."""
    start = time.perf_counter()
    saliency = attribute(model, images, target, preset="paper-cifar", iterations=iterations, precision="fp32",
                         seed=0, progress=False, channels_last=layout == "channels_last")
    return (time.perf_counter() - start) / iterations, saliency


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--images", type=int, default=16, help="CIFAR-10 images of the 32-px settings")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared", type=Path, default=None, help="folder with data/ and models/ (benchmarks/paths.py)")
    ap.add_argument("--rows", action="store_true", help="also append the results to the rows (benchmarks/rows.py)")
    args = ap.parse_args(argv)
    args.shared = shared_dir(args.shared)
    torch.set_num_threads(args.threads)
    print(f"CPU {cpu_capability()}, {args.threads} threads, fp32, {args.iterations} iterations per run")
    rows = []
    for name, model, images, target in settings(args):
        seconds, maps = {"nchw": [], "channels_last": []}, {}
        for r in range(args.pairs + 1):
            for layout in ("nchw", "channels_last") if r % 2 == 0 else ("channels_last", "nchw"):
                s, maps[layout] = timed_run(model, images, target, args.iterations, layout)
                if r:                                       # the first pair warms up
                    seconds[layout].append(s)
        ratio = statistics.median(a / b for a, b in zip(seconds["nchw"], seconds["channels_last"]))
        nchw, last = (statistics.median(seconds[k]) for k in ("nchw", "channels_last"))
        diff = (maps["nchw"] - maps["channels_last"]).abs().max().item()
        print(f"{name}: {nchw:.2f} s NCHW, {last:.2f} s channels-last per iteration: {ratio:.2f}x "
              f"(max |map difference| {diff:.1e})", flush=True)
        rows.append({"setting": f"{name}, SaS fp32, {args.iterations} iterations",
                     "metric": "seconds per iteration: NCHW / channels-last model input (median of "
                               f"{args.pairs} paired runs)",
                     "value": f"{nchw:.2f} / {last:.2f} s: {ratio:.2f}x"})
    if args.rows:
        append_rows("speed", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
