"""Does ``preset="fast-imagenet"`` give the paper's ImageNet maps for 1/4 of the passes?

    python benchmarks/imagenet_fast_check.py --photos chelsea,coffee --precision bf16

On scikit-image's bundled photos with the bundled EfficientNet-Lite0 (224 px, top-1 class as
target): the 800-iteration ``paper-imagenet`` map (28,800 model image-passes per image), the same
run's map after 200 iterations (the paper setting cut to 7,200 passes, from ``SaSTrace.saliency``),
and ``fast-imagenet`` (7,200 passes; first the sampled schedule at 1,200 iterations, now the
same as the cut, see benchmarks/RESULTS.md). Reports each map's deletion-game Overall (SPEC section 5)
and the Spearman rank correlation of the cheaper maps with the 800-iteration one.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sas_fast
from sas_fast.config import make_config
from sas_fast.evaluate import deletion_game
from sas_fast.models import efficientnet_lite0, preprocess_imagenet


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two maps (ties broken by position; saliency maps have few ties)."""
    ra, rb = (x.flatten().argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="chelsea", help="comma-separated skimage.data names")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--cut", type=int, default=200, help="iteration of the 800 whose map is also scored")
    ap.add_argument("--out", type=Path, default=Path("results/imagenet_fast.json"))
    args = ap.parse_args(argv)
    import skimage.data

    model = efficientnet_lite0()
    rows = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.photos.split(","):
        if name in rows:
            continue
        image = preprocess_imagenet(getattr(skimage.data, name)())[0]
        with torch.no_grad():
            target = model(image).argmax(-1)
        start = time.perf_counter()
        paper, trace = sas_fast.attribute(model, image, target, preset="paper-imagenet", progress=False,
                                          precision=args.precision, return_trace=True, trace_iterations=[args.cut])
        paper_s = time.perf_counter() - start
        fast_config = make_config("fast-imagenet")
        if fast_config == make_config("paper-imagenet", iterations=args.cut):   # the cut itself: no rerun
            fast, fast_passes, fast_s = trace.saliency[0], args.cut * fast_config.passes_per_iteration(), None
        else:
            start = time.perf_counter()
            fast, fast_trace = sas_fast.attribute(model, image, target, preset="fast-imagenet",
                                                  progress=False, precision=args.precision, return_trace=True)
            fast_passes, fast_s = int(fast_trace.passes[0]), time.perf_counter() - start
        maps = {"paper-imagenet (800 it.)": (paper, int(trace.passes[0]), paper_s),
                f"paper-imagenet cut at {args.cut} it.": (
                    trace.saliency[0], args.cut * make_config("paper-imagenet").passes_per_iteration(), None),
                "fast-imagenet": (fast, fast_passes, fast_s)}
        rows[name] = {}
        for method, (sal, passes, seconds) in maps.items():
            game = deletion_game(model, image, sal, target)
            rows[name][method] = {"passes": passes, "overall": game.overall, "ins": game.ins, "dele": game.dele,
                                  "spearman_vs_800": spearman(sal, paper), "seconds": seconds}
            print(f"{name} {method:30s} passes {passes:6d} Overall {game.overall:.3f} "
                  f"rank corr. with 800 it. {rows[name][method]['spearman_vs_800']:.3f}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
