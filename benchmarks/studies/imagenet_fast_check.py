"""Do the cheaper presets give the paper's ImageNet maps?

    python -m benchmarks.studies.imagenet_fast_check --photos chelsea,coffee --precision bf16
    python -m benchmarks.studies.imagenet_fast_check --photos rocket,camera --methods fast-imagenet,fast

On scikit-image's bundled photos with the bundled EfficientNet-Lite0 (224 px, top-1 class as
target), the maps of ``--methods`` (default ``paper-imagenet,fast-imagenet``):

- ``paper-imagenet``: the 800-iteration map (28,800 model image-passes per image) and the same
  run's map after ``--cut`` iterations (``SaSTrace.saliency``);
- ``fast-imagenet``: the ImageNet schedule cut to 200 iterations (7,200 passes); when it is the
  cut of a ``paper-imagenet`` run (in this run or stored in ``--out``), that map is reused;
- ``fast``: the sampled 32-px preset (1,800 passes).

Reports each map's deletion-game Overall (docs/SPEC.md section 5) and the Spearman rank correlation with
the 800-iteration map and with ``fast-imagenet``'s, where those maps were computed in the same
process (maps are not stored). ``--out`` keeps every photo's rows; a method already there is skipped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sas_fast
from benchmarks.rows import append as append_rows
from sas_fast.config import make_config
from sas_fast.evaluate import deletion_game
from sas_fast.models import efficientnet_lite0, preprocess_imagenet

METHODS = ("paper-imagenet", "fast-imagenet", "fast")
PAPER = "paper-imagenet (800 it.)"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two maps (ties broken by position; saliency maps have few ties)."""
    ra, rb = (x.flatten().argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _run(method: str, model, image, target, precision: str, cut: int) -> dict:
    """``{row key: (map, passes, seconds)}`` of one method on one photo."""
    start = time.perf_counter()
    if method == "paper-imagenet":
        paper, trace = sas_fast.attribute(model, image, target, preset="paper-imagenet", progress=None,
                                          precision=precision, return_trace=True, trace_iterations=[cut])
        cut_passes = cut * make_config("paper-imagenet").passes_per_iteration()
        return {PAPER: (paper, int(trace.passes[0]), time.perf_counter() - start),
                f"paper-imagenet cut at {cut} it.": (trace.saliency[0], cut_passes, None)}
    saliency, trace = sas_fast.attribute(model, image, target, preset=method, progress=None,
                                         precision=precision, return_trace=True)
    return {method: (saliency, int(trace.passes[0]), time.perf_counter() - start)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="chelsea", help="comma-separated skimage.data names")
    ap.add_argument("--methods", default="paper-imagenet,fast-imagenet", help=f"comma-separated, of {METHODS}")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--cut", type=int, default=200, help="iteration of the 800 whose map is also scored")
    ap.add_argument("--out", type=Path, default=Path("results/imagenet_fast.json"))
    ap.add_argument("--rows", action="store_true", help="also append each photo's scores to the results rows "
                    "(benchmarks/rows.py)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {METHODS}")
    import skimage.data

    model = efficientnet_lite0()
    rows = json.loads(args.out.read_text()) if args.out.exists() else {}
    cut_key = f"paper-imagenet cut at {args.cut} it."
    is_cut = make_config("fast-imagenet") == make_config("paper-imagenet", iterations=args.cut)
    for name in args.photos.split(","):
        image = preprocess_imagenet(getattr(skimage.data, name)())[0]
        with torch.no_grad():
            target = model(image).argmax(-1)
        row, maps = rows.setdefault(name, {}), {}         # maps: this process's, of this photo
        for method in methods:
            if (PAPER if method == "paper-imagenet" else method) in row:
                continue
            if method == "fast-imagenet" and is_cut and cut_key in row:   # the same map: no rerun
                row[method] = dict(row[cut_key])
                if cut_key in maps:
                    maps[method] = maps[cut_key]
            else:
                for key, (sal, passes, seconds) in _run(method, model, image, target, args.precision,
                                                        args.cut).items():
                    game = deletion_game(model, image, sal, target)
                    maps[key] = sal
                    row[key] = {"passes": passes, "overall": game.overall, "ins": game.ins,
                                "dele": game.dele, "seconds": seconds}
            for key, sal in maps.items():
                for ref, label in ((PAPER, "spearman_vs_800"), ("fast-imagenet", "spearman_vs_fast_imagenet")):
                    if ref in maps:
                        row[key][label] = spearman(sal, maps[ref])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))
        for key, r in row.items():
            print(f"{name} {key:48s} passes {r['passes']:6d} Overall {r['overall']:.3f} rank corr. with "
                  f"800 it. {r.get('spearman_vs_800', float('nan')):.3f}, with fast-imagenet "
                  f"{r.get('spearman_vs_fast_imagenet', float('nan')):.3f}", flush=True)
        if args.rows:
            append_rows("imagenet", [{"setting": f"bundled photo {name}, EfficientNet-Lite0, top-1 class",
                                      "metric": f"Overall, {key}",
                                      "value": f"{r['overall']:.3f} ({r['passes']:,} passes); rank correlation "
                                               f"with the 800-iteration map {r.get('spearman_vs_800', float('nan')):.2f}"}
                                     for key, r in row.items()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
