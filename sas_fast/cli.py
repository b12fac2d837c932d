"""Command line: ``sas-fast explain IMAGE... | --demo`` and ``sas-fast compare IMAGE... | --demo``.

``explain`` runs SaS with the bundled ImageNet classifier (EfficientNet-Lite0) on photos
and writes one heat-map overlay PNG per image, at the photo's own size; ``compare`` writes
a grid of SaS next to the baselines (paper figure 5); ``attribute-dataset`` and ``merge``
(:mod:`sas_fast.dataset.cli`) attribute whole datasets, sharded under ``torchrun``
(``torchrun --nproc-per-node K -m sas_fast.cli attribute-dataset ...``); ``gallery``
(:mod:`sas_fast.gallery`) writes a static HTML page to look at such a run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checks import check_writable
from .config import PRESETS, PRECISIONS
from .cpu_memory import tune_malloc
from .dataset.cli import add_cli_arguments as add_dataset_commands
from .gallery import add_cli_arguments as add_gallery_command
from .ops import BACKENDS
from .images import read_rgb
from .precision import resolve_precision

#: ``explain --demo``: the 7,200-pass schedule (all 18 areas every iteration) for 40 iterations (1,440
#: model image-passes), the most that fit 120 s on one AVX2 core, as good on the game as 80
#: (benchmarks/studies/demo_budget.py, RESULTS.md), and on a slower CPU as many as fit
#: ``DEMO_MAX_SECONDS`` (30: as good as 80 on the game; 20: -0.025).
DEMO_PRESET = "fast-imagenet"
DEMO_ITERATIONS = 40
DEMO_MAX_SECONDS = 120.0
DEMO_PHOTO = "chelsea"


def _load_photo(path: str) -> np.ndarray:
    try:
        return read_rgb(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path!r}: {err}") from err


def _out_paths(names: list, out: str | None) -> list:
    """The overlay PNG of each photo, checked to be writable and not shared by two photos (before
    any work is done); an ``--out`` folder is made only once the names are known to be fine."""
    folder = out is not None and not out.lower().endswith(".png")
    if out is not None and not folder and len(names) > 1:
        raise ValueError(f"--out {out} names one PNG but {len(names)} images were given: give a folder "
                         "for several images (or leave --out out: <stem>_sas.png each)")
    paths = [Path(out) if out is not None and not folder else Path(out or ".") / f"{Path(n).stem}_sas.png"
             for n in names]
    first = {}
    for name, path in zip(names, paths):
        if first.setdefault(path, name) != name:
            raise ValueError(f"{first[path]} and {name} would both be written to {path}: rename one of them")
    if folder:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot create output folder {out}: {err.strerror or err}") from err
    return [check_writable(p) for p in paths]


def _model(name: str):
    from .models import efficientnet_lite0, preprocess_imagenet

    if name != "efficientnet-lite0":
        raise ValueError(f"unknown model {name!r} (available: efficientnet-lite0)")
    return efficientnet_lite0(), preprocess_imagenet


def _names(args) -> list:
    """The photo names of --demo or IMAGE..., after checking --iterations, --max-seconds and
    (compare) --ep-iterations."""
    if args.iterations is not None and args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    if args.max_seconds is not None and not 0 < args.max_seconds < float("inf"):
        raise ValueError(f"--max-seconds must be a number of seconds > 0, got {args.max_seconds}")
    if getattr(args, "ep_iterations", 1) < 1:
        raise ValueError(f"--ep-iterations must be >= 1, got {args.ep_iterations}")
    if args.demo:
        return [f"{DEMO_PHOTO}.png"]
    if not args.images:
        raise ValueError(f"{args.command}: give IMAGE paths or --demo")
    return list(args.images)


def _schedule(args) -> tuple:
    """(preset, iterations) of --demo / --preset / --iterations."""
    preset = args.preset or (DEMO_PRESET if args.demo else "default")
    if args.iterations is not None:
        return preset, args.iterations
    if args.demo and args.preset is None:
        return preset, DEMO_ITERATIONS
    return preset, PRESETS[preset].iterations


def _max_seconds(args) -> float | None:
    """``--max-seconds``; with --demo and its own schedule (no --preset, no --iterations), 120 s."""
    if args.max_seconds is not None:
        return args.max_seconds
    if args.demo and args.preset is None and args.iterations is None:
        return DEMO_MAX_SECONDS
    return None


def _run_sas(args, model, images, target, preset: str, iterations: int, precision, layer=None) -> tuple:
    """(saliency ``B x H x W``, iterations run) of SaS under ``--max-seconds``; says so when the
    budget stopped it early."""
    from . import attribute

    saliency, trace = attribute(model, images, target, preset=preset, iterations=iterations, layer=layer,
                                backend=args.backend, precision=precision.precision, progress=True,
                                max_seconds=_max_seconds(args), return_trace=True)
    ran = len(trace.loss)
    if ran < iterations:
        print(f"time budget: stopped after {ran} of {iterations} iterations "
              f"({int(trace.passes[0])} model passes per image; --max-seconds to change it)")
    return saliency, ran


def _inputs(args):
    """(names, photos, model, images ``B x 3 x 224 x 224``, probabilities, (preset, iterations),
    precision) for --demo or IMAGE...; ``precision`` is ``--precision`` resolved
    (:class:`sas_fast.precision.Precision`: "fp32" or "bf16", and why)."""
    names = _names(args)
    if args.demo:
        import skimage.data

        photos = [getattr(skimage.data, DEMO_PHOTO)()]
    else:
        photos = [_load_photo(p) for p in names]
    iterations = _schedule(args)
    model, preprocess = _model(args.model)
    images = torch.cat([preprocess(p)[0] for p in photos])
    with torch.no_grad():
        probs = model(images).softmax(-1)
    precision = resolve_precision(args.precision, images.device, images.dtype)
    return names, photos, model, images, probs, iterations, precision


def explain(args) -> int:
    """Attribute each photo and write ``<stem>_sas.png`` overlays."""
    from .viz import overlay, save_png

    paths = _out_paths(_names(args), args.out)
    names, photos, model, images, probs, (preset, iterations), precision = _inputs(args)
    target = args.target if args.target is not None else probs.argmax(-1)
    layer = args.layer
    if layer is not None and layer not in dict(model.named_modules()):
        raise ValueError(f"model has no layer {layer!r}; try one of "
                         f"{[n for n, _ in model.named_modules() if n][:12]}")
    what = f"layer {layer}" if layer else "class"
    passes = iterations * PRESETS[preset].passes_per_iteration()
    max_seconds = _max_seconds(args)
    budget = f", at most {max_seconds:g} s" if max_seconds else ""
    print(f"SaS ({what} saliency): {len(photos)} image(s), preset {preset}, {iterations} iterations "
          f"({passes} model passes per image{budget}), backend {args.backend}, model precision "
          f"{precision.precision} ({precision.reason})")
    start = time.perf_counter()
    saliency, iterations = _run_sas(args, model, images, target, preset, iterations, precision, layer)
    seconds = time.perf_counter() - start
    targets = torch.as_tensor(target).expand(len(photos))
    for i, (name, path) in enumerate(zip(names, paths)):
        save_png(path, overlay(photos[i], saliency[i]))
        t = int(targets[i])
        print(f"{name}: class {t} (p = {float(probs[i, t]):.3f}) -> {path}")
    print(f"{seconds:.1f} s ({seconds / iterations:.2f} s per iteration)")
    return 0


def compare(args) -> int:
    """Figure-5 style grid: each photo, then SaS and the baselines as overlays."""
    from . import baselines
    from .viz import attribution_grid

    _names(args)
    out = check_writable(args.out or "compare.png")
    names, photos, model, images, probs, (preset, iterations), precision = _inputs(args)
    target = args.target if args.target is not None else probs.argmax(-1)
    ran = []

    def sas():
        saliency, ran_iterations = _run_sas(args, model, images, target, preset, iterations, precision)
        ran.append(ran_iterations)
        return saliency

    methods = {
        "SaS": sas,
        "GradCAM": lambda: baselines.grad_cam(model, images, target),
        "IG": lambda: baselines.integrated_gradients(model, images, target, internal_batch_size=25),
        "Guided BP": lambda: baselines.guided_backprop(model, images, target),
    }
    if baselines.HAS_TORCHRAY:
        methods["EP"] = lambda: baselines.extremal_perturbation(model, images, target,
                                                                max_iter=args.ep_iterations, progress=True)
    maps = {}
    for name, fn in methods.items():
        start = time.perf_counter()
        maps[name] = fn().cpu()
        print(f"{name}: {time.perf_counter() - start:.1f} s")
    shown = [np.asarray(photo, dtype=np.float32) / 255 for photo in photos]
    rows = [[maps[m][i] / maps[m][i].max().clamp_min(1e-12) for m in maps] for i in range(len(photos))]
    attribution_grid(shown, rows, list(maps), out, row_titles=[Path(n).stem for n in names])
    print(f"SaS preset {preset}, {ran[0]} iterations, model precision {precision.precision} "
          f"({precision.reason}); grid -> {out}")
    return 0


def _photo_arguments(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments ``explain`` and ``compare`` share."""
    p.add_argument("images", nargs="*", help="image files (any format PIL reads)")
    p.add_argument("--demo", action="store_true", help=f"use the bundled photo '{DEMO_PHOTO}'")
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--target", type=int, default=None, help="class index (default: top-1)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help=f"SaS preset (default 'default', the 'fastest' schedule; with --demo {DEMO_PRESET} cut "
                        f"to {DEMO_ITERATIONS} iterations)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"optimisation steps (default: the preset's; {DEMO_ITERATIONS} with --demo)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help=f"wall-clock budget of SaS: no iteration is started that would end after it "
                        f"(default: none; {DEMO_MAX_SECONDS:g} with --demo)")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="model precision (default auto: bf16 where the device computes it natively, "
                        "else fp32)")
    p.add_argument("--out", default=None, help=out_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sas-fast", description="Saliency as a Schedule")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="heat-map overlays for photos (EfficientNet-Lite0, ImageNet)")
    _photo_arguments(p, "output PNG (one image) or folder")
    p.add_argument("--layer", default=None, help="module name: feature saliency of that layer")
    p.set_defaults(func=explain)
    p = sub.add_parser("compare", help="grid of SaS, GradCAM, IG, Guided BP (and Extremal Perturbation "
                                       "if TorchRay is installed) for photos (figure 5)")
    _photo_arguments(p, "output PNG (default compare.png)")
    p.add_argument("--ep-iterations", type=int, default=800, help="Extremal Perturbation steps (default 800)")
    p.set_defaults(func=compare)
    add_dataset_commands(sub)
    add_gallery_command(sub)
    return parser


def run_command(args) -> int:
    """``args.func(args)``; a bad input (``ValueError``) or an unwritable path (``OSError``) is
    reported as one line ``sas-fast: ...`` on stderr with exit status 2, without a traceback."""
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print("sas-fast: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


def main(argv=None) -> int:
    """Run the command; a bad input is one line ``sas-fast: ...`` on stderr, exit status 2.
    The process is the command's own, so glibc's malloc is tuned for CPU model calls
    (:func:`sas_fast.cpu_memory.tune_malloc`; ``SAS_FAST_TUNE_MALLOC=0`` leaves it alone)."""
    args = build_parser().parse_args(argv)
    tune_malloc()
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
