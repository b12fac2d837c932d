"""Figures for people, on scikit-image's bundled photos with EfficientNet-Lite0 (ImageNet).

    python -m benchmarks.figures --out docs --iterations 80 --precision bf16

- ``compare_grid.png`` (paper figure 5): each photo, then SaS, GradCAM, IG, Guided BP and (with
  TorchRay installed) Extremal Perturbation
  (``sas-fast compare`` on the photos);
- ``feature_saliency.png`` (paper figure 6): for one photo, SaS feature saliency of several
  layers, from early blocks to the last convolution, then class saliency.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

import sas_fast
from sas_fast.cli import main as cli_main
from sas_fast.models import efficientnet_lite0, preprocess_imagenet
from sas_fast.viz import attribution_grid

LAYERS = ["_blocks.3", "_blocks.8", "_blocks.15", "_conv_head"]
#: the schedule of the figures: the 7,200-pass one (all 18 areas every iteration), cut to --iterations
PRESET = "fast-imagenet"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="chelsea,coffee", help="scikit-image sample names")
    ap.add_argument("--iterations", type=int, default=80)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.photos.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in names:
            paths.append(str(Path(tmp) / f"{name}.png"))
            Image.fromarray(getattr(skimage.data, name)()).save(paths[-1])
        cli_main(["compare", *paths, "--preset", PRESET, "--iterations", str(args.iterations),
                  "--precision", args.precision,
                  "--out", str(args.out / "compare_grid.png")])

    photo = getattr(skimage.data, names[0])()
    model = efficientnet_lite0()
    x, shown = preprocess_imagenet(photo)
    maps = [sas_fast.attribute(model, x, layer=layer, preset=PRESET, iterations=args.iterations,
                               precision=args.precision, progress=True)[0] for layer in LAYERS]
    maps.append(sas_fast.attribute(model, x, preset=PRESET, iterations=args.iterations, precision=args.precision,
                                   progress=True)[0])
    attribution_grid([np.asarray(shown)], [maps], LAYERS + ["class (logit)"],
                     args.out / "feature_saliency.png", row_titles=[names[0]])
    print(f"figures -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
