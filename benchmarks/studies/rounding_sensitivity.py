"""How far apart two SaS runs drift when they differ only by rounding.

    python -m benchmarks.studies.rounding_sensitivity --dataset cifar10 --arch resnet8 --index 3

On one test image and the paper's trained model, max |saliency a - saliency b| (min-max
normalised schedules, paper eq. 8) after 5, 10, 20, 50 iterations (``--checkpoints``) for three pairs:

- float32, ``reference`` ops, pre-mask vs pre-mask x (1 + 1e-7) (one rounding step);
- float32, ``reference`` vs ``cpp`` ops, same pre-mask;
- float64 model, images and masks, ``reference`` vs ``cpp`` ops.

The first pair measures the optimisation's own amplification of rounding, which bounds how
closely any two backends can agree in float32.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from benchmarks.paths import shared_dir
from benchmarks.rows import append as append_rows
from benchmarks.studies.reproduce_table2 import SETTING_NAMES
from sas_fast import ops
from sas_fast.config import SaSConfig
from sas_fast.iteration import IterationRunner
from sas_fast.models import load_npz_dataset, load_paper_model
from sas_fast.step import Objective

def run(model, image, target, premask, backend: str, dtype: torch.dtype, config: SaSConfig,
        checkpoints) -> dict:
    """Normalised schedules ``{iteration: H x W}`` at the ``checkpoints`` of one run from ``premask``."""
    model, image = model.to(dtype), image.to(dtype)
    config = dataclasses.replace(config.resolved(*image.shape[-2:]), backend=backend)
    pyramid = ops.blur_pyramid(image, config.levels, config.max_blur, backend="reference")
    premask = premask.to(dtype).clone().requires_grad_(True)
    iteration = IterationRunner(premask, pyramid, Objective(model, image, target), config)
    out = {}
    for i in range(1, max(checkpoints) + 1):
        iteration()
        if i in checkpoints:
            s = ops.smooth_softmax_pool(premask.detach(), config.window, config.beta, backend="reference")
            out[i] = (s - s.min()) / (s.max() - s.min())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["mnist", "cifar10"], default="cifar10")
    ap.add_argument("--arch", choices=["resnet8", "vgg16"], default="resnet8")
    ap.add_argument("--index", type=int, default=3, help="test image index")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--threshold-tol", type=float, default=SaSConfig.threshold_tol)
    ap.add_argument("--shared", type=Path, default=None, help="folder with data/ and models/ (benchmarks/paths.py)")
    ap.add_argument("--rows", action="store_true", help="also append the table to the results rows (benchmarks/rows.py)")
    args = ap.parse_args(argv)
    args.shared = shared_dir(args.shared)
    config = SaSConfig(threshold_tol=args.threshold_tol)

    model = load_paper_model(args.arch, args.dataset, args.shared / "models").requires_grad_(False)
    image, label = load_npz_dataset(args.dataset, args.shared / "data", [args.index])
    r = SaSConfig().resolved(*image.shape[-2:]).window // 2
    premask = torch.randn(1, 1, image.shape[-2] + 2 * r, image.shape[-1] + 2 * r,
                          generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pairs = {
        "fp32 reference vs reference, pre-mask x (1 + 1e-7)":
            (("reference", premask, torch.float32), ("reference", premask * (1 + 1e-7), torch.float32)),
        "fp32 reference vs cpp": (("reference", premask, torch.float32), ("cpp", premask, torch.float32)),
        "fp64 reference vs cpp": (("reference", premask, torch.float64), ("cpp", premask, torch.float64)),
    }
    print(f"| pair | {' | '.join(f'{i} it' for i in args.checkpoints)} |")
    print(f"| --- |{' --- |' * len(args.checkpoints)}")
    result_rows = []
    for name, (a, b) in pairs.items():
        runs = [run(model, image, label, p, backend, dtype, config, args.checkpoints)
                for backend, p, dtype in (a, b)]
        diffs = [f"{(runs[0][i] - runs[1][i]).abs().max().item():.1e}" for i in args.checkpoints]
        print(f"| {name} | {' | '.join(diffs)} |", flush=True)
        result_rows.append({"setting": f"one {SETTING_NAMES[args.dataset]} image, trained "
                                       f"{SETTING_NAMES[args.arch]}, default SaS",
                            "metric": "max abs saliency difference after "
                                      f"{' / '.join(map(str, args.checkpoints))} iterations: {name}",
                            "value": " / ".join(diffs)})
    if args.rows:
        append_rows("agreement", result_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
