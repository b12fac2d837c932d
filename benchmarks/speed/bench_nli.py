"""Noisy Linear Imputation: the batched torch solver against the scipy reference, per mask.

    python -m benchmarks.speed.bench_nli                      # CUDA if present, else CPU
    python -m benchmarks.speed.bench_nli --device cpu --sizes 224 32 --images 2

For each size, ``--images`` random smooth RGB images and, for each, the 9 keep-masks of one
deletion game (10 %, ..., 90 % of the pixels removed, in the order of a blob-shaped saliency).
scipy (sparse direct solve, CPU, one mask at a time) and the torch solver (``--device``, all
masks of ``--batch`` images per call) impute the same masks with noise 0; prints ms per mask,
the speed-up and the max abs difference (target: >= 50x on a GPU at 224 px, <= 1e-4).
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import sync
from benchmarks.rows import append as append_rows
import torch.nn.functional as F

from sas_fast.evaluate import nli_impute
from sas_fast.precision import cpu_capability


def game_masks(n_images: int, size: int, generator: torch.Generator) -> tuple:
    """Images ``N x 3 x S x S`` and keep masks ``(9 N) x S x S`` (10-90 % removed)."""
    images = F.avg_pool2d(torch.randn(n_images, 3, size + 8, size + 8, generator=generator), 9, 1)
    blobs = F.avg_pool2d(torch.rand(n_images, 1, size + 16, size + 16, generator=generator), 17, 1)[:, 0]
    order = blobs.flatten(1).argsort(dim=1, descending=True)
    keeps = []
    for ratio in torch.arange(1, 10) / 10:
        removed = int(ratio * size * size)
        keep = torch.ones(n_images, size * size, dtype=torch.bool)
        keep.scatter_(1, order[:, :removed], False)
        keeps.append(keep.view(n_images, size, size))
    return images.repeat_interleave(9, 0), torch.stack(keeps, 1).flatten(0, 1)


def bench(size: int, args, device: torch.device) -> dict:
    images, keep = game_masks(args.images, size, torch.Generator().manual_seed(size))
    n = keep.shape[0]
    start = time.perf_counter()
    ref = nli_impute(images, keep, noise=0.0, solver="scipy")
    scipy_ms = 1e3 * (time.perf_counter() - start) / n
    per_call = 9 * args.batch
    x, k = images.to(device), keep.to(device)
    nli_impute(x[:per_call], k[:per_call], noise=0.0, solver="torch")       # warm-up
    sync(device)
    start = time.perf_counter()
    out = torch.cat([nli_impute(x[i:i + per_call], k[i:i + per_call], noise=0.0, solver="torch")
                     for i in range(0, n, per_call)])
    sync(device)
    torch_ms = 1e3 * (time.perf_counter() - start) / n
    return {"size": size, "masks": n, "scipy_ms": scipy_ms, "torch_ms": torch_ms,
            "speedup": scipy_ms / torch_ms, "max_abs": (out.cpu() - ref).abs().max().item()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    ap.add_argument("--images", type=int, default=2, help="images per size (9 masks each)")
    ap.add_argument("--batch", type=int, default=2, help="images per torch call")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", action="store_true", help="also append the table to the results rows (benchmarks/rows.py)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch solver on {name} ({torch.get_num_threads()} CPU threads, CPU capability "
          f"{cpu_capability()}), scipy on the CPU")
    print("| size | masks | scipy ms / mask | torch ms / mask | speed-up | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    result_rows = []
    for size in args.sizes:
        r = bench(size, args, device)
        print(f"| {r['size']} | {r['masks']} | {r['scipy_ms']:.1f} | {r['torch_ms']:.2f} | "
              f"{r['speedup']:.1f}x | {r['max_abs']:.1e} |", flush=True)
        result_rows.append({"setting": f"Noisy Linear Imputation per mask, torch solver on "
                                       f"{'the CPU' if device.type == 'cpu' else name}, {torch.get_num_threads()} CPU thread"
                                       f"{'s' if torch.get_num_threads() != 1 else ''}",
                            "metric": f"{size} px: scipy / torch",
                            "value": f"{r['scipy_ms']:.1f} ms / {r['torch_ms']:.2f} ms ({r['speedup']:.1f}x), "
                                     f"max abs difference {r['max_abs']:.1e}"})
    if args.rows:
        append_rows("speed", result_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
