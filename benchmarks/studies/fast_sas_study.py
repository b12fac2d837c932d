"""Quality per model image-pass: ways to spend fewer passes than the default for the same Overall.

    python -m benchmarks.studies.fast_sas_study --dataset cifar10 --arch resnet8 --split calibration --n 16 \
        --methods cut@1800,cosine@1800,K6@1800,sample9@1800,sample3@1800,sample3-cosine@1800
    python -m benchmarks.studies.fast_sas_study --dataset cifar10 --arch resnet8 --split evaluation --n 64 \
        --methods default,sample3@1800,sample3@900,sample3@450

A method is ``FAMILY@PASSES``: the family's SaS options (:data:`FAMILIES`) with as many iterations
as fit in PASSES model image-passes per image (forward + input-gradient backward of one masked
image = 1; ``SaSConfig.passes_per_iteration``; an init map's pass, ``SaSConfig.init_passes``, counts).
``default`` is the paper's 200-iteration schedule (preset ``paper-cifar``, 7,200 passes), the
schedule every family's options modify; its
maps after 12, 25, 50 and 100 iterations (``SaSTrace.saliency``) are the default cut short at
432, 900, 1,800 and 3,600 passes, reported as ``cut@N`` at no extra cost. ``Gradient``,
``Guided BP``, ``IG`` and ``GradCAM`` run the gradient baselines on the same images (1 pass, IG 50),
``EP`` Extremal Perturbation (800 passes; needs TorchRay).

Calibration images are test indices = 1 mod 10 (``calibrate_sas.calibration_indices``),
evaluation images the others (as ``reproduce_table2.py``). Every method runs on the same images;
per-image Overall (docs/SPEC.md section 5) goes to ``<out>/fast_<split>_<dataset>_<arch>.json`` after
every method (a rerun skips the methods already there) and a markdown table with the paired
differences against ``--reference`` and against the default cut short at equal passes to ``.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import sas_fast
from benchmarks.common import paired
from benchmarks.paths import shared_dir
from benchmarks.rows import append as append_rows
from sas_fast.config import make_config
from sas_fast.evaluate import GameResult, deletion_game
from sas_fast.models import load_npz_dataset, load_paper_model, stratified_indices

from benchmarks.studies.calibrate_sas import calibration_indices
from benchmarks.studies.reproduce_table2 import BASELINES

#: model image-passes per image of the baselines (IG: its 50 steps; EP: TorchRay's 800 steps, one
#: masked image each; needs TorchRay)
BASELINE_PASSES = {"Gradient": 1, "Guided BP": 1, "IG": 50, "GradCAM": 1, "EP": 800}
#: the preset that ``default`` names and that every family modifies: the paper's 32-px schedule
BASE = "paper-cifar"


#: the candidates of the study, fixed before any result came in (benchmarks/studies/rules.md)
FAMILIES = {
    "cut": {},                                                  # the default schedule, cut short
    "cosine": {"lr": 0.1, "lr_decay": "cosine"},                # larger lr, cosine decay
    "K6": {"num_masks": 6},                                     # 4 inner areas, more iterations
    "sample9": {"area_samples": 9},                             # 9 of 18 areas per iteration
    "sample3": {"area_samples": 3},                             # 3 of 18 areas per iteration
    "sample3-cosine": {"area_samples": 3, "lr": 0.1, "lr_decay": "cosine"},
    # the candidates for 450 passes (1/16 of the default), fixed before their results
    "sample3-cosine-lr0.2": {"area_samples": 3, "lr": 0.2, "lr_decay": "cosine"},
    "sample2-cosine": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine"},
    "sample1-cosine": {"area_samples": 1, "lr": 0.1, "lr_decay": "cosine"},
    "gradinit-sample3-cosine": {"init": "gradient", "area_samples": 3, "lr": 0.1, "lr_decay": "cosine"},
    "gbpinit-sample3-cosine": {"init": "guided_backprop", "area_samples": 3, "lr": 0.1, "lr_decay": "cosine"},
    "gbpinit2-sample3-cosine": {"init": "guided_backprop", "init_scale": 2.0, "area_samples": 3, "lr": 0.1,
                                "lr_decay": "cosine"},
    "gbpinit-sample1-cosine": {"init": "guided_backprop", "area_samples": 1, "lr": 0.1, "lr_decay": "cosine"},
    # variance-reduced area sampling and two step variants at 450 passes, fixed before their results
    "sample2-cosine-antithetic": {"area_samples": 2, "area_sampling": "antithetic", "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-balanced": {"area_samples": 2, "area_sampling": "balanced", "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-balanced-antithetic": {"area_samples": 2, "area_sampling": "balanced-antithetic", "lr": 0.1,
                                           "lr_decay": "cosine"},
    "sample1-cosine-balanced": {"area_samples": 1, "area_sampling": "balanced", "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-w7": {"area_samples": 2, "window": 7, "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-lr0.15": {"area_samples": 2, "lr": 0.15, "lr_decay": "cosine"},
    # the second round: SAGA over the sampled areas (control_variate), fixed before its results
    "sample1-cosine-saga": {"area_samples": 1, "control_variate": True, "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-saga": {"area_samples": 2, "control_variate": True, "lr": 0.1, "lr_decay": "cosine"},
    "sample3-cosine-saga": {"area_samples": 3, "control_variate": True, "lr": 0.1, "lr_decay": "cosine"},
    # the third round: softer masks (sharpness constant or annealed to 20), fixed before its results
    "sample2-cosine-s10": {"area_samples": 2, "sharpness": 10.0, "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-s14": {"area_samples": 2, "sharpness": 14.0, "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-sharpen5": {"area_samples": 2, "sharpness_start": 5.0, "lr": 0.1, "lr_decay": "cosine"},
    "sample2-cosine-sharpen10": {"area_samples": 2, "sharpness_start": 10.0, "lr": 0.1, "lr_decay": "cosine"},
    # the fourth round: step rules for short runs, fixed before its results
    "sample2-warmcos": {"area_samples": 2, "lr": 0.1, "lr_decay": "warmup-cosine"},
    "sample2-linear": {"area_samples": 2, "lr": 0.1, "lr_decay": "linear"},
    "sample2-cosine-b2": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine", "betas": (0.9, 0.99)},
    "sample2-cosine-b1": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine", "betas": (0.8, 0.999)},
    # the fifth round: the learning rate kept up longer (a decay ending above 0), fixed before its results
    "sample2-cosine-end0.5": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine", "lr_end": 0.5},
    "sample2-cosine-end0.25": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine", "lr_end": 0.25},
    "sample2-const": {"area_samples": 2, "lr": 0.1},
    "sample1-cosine-end0.5": {"area_samples": 1, "lr": 0.1, "lr_decay": "cosine", "lr_end": 0.5},
    "sample3-cosine-end0.5": {"area_samples": 3, "lr": 0.1, "lr_decay": "cosine", "lr_end": 0.5},
    # the sixth round: the map from the pre-mask averaged over the run's tail, fixed before its results
    "sample2-cosine-end0.25-avg0.5": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine", "lr_end": 0.25,
                                      "average_tail": 0.5},
    "sample2-cosine-end0.25-avg0.25": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine", "lr_end": 0.25,
                                       "average_tail": 0.25},
    "sample2-cosine-end0.5-avg0.5": {"area_samples": 2, "lr": 0.1, "lr_decay": "cosine", "lr_end": 0.5,
                                     "average_tail": 0.5},
    "sample2-const-avg0.5": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5},
    # not a candidate: fastest from another seed (start and area draws), the run-to-run spread of its distances
    "sample2-const-avg0.5-seed1": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "seed": 1},
    # the seventh round: a larger constant lr, one area, a longer tail, coarse-to-fine; fixed before its results
    "sample2-const-lr0.2-avg0.5": {"area_samples": 2, "lr": 0.2, "average_tail": 0.5},
    "sample1-const-avg0.5": {"area_samples": 1, "lr": 0.1, "average_tail": 0.5},
    "sample2-const-avg0.75": {"area_samples": 2, "lr": 0.1, "average_tail": 0.75},
    "sample2-const-avg0.5-c2f4": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "coarse_block": 4,
                                  "coarse_fraction": 0.25},
    "sample2-const-avg0.5-c2f2": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "coarse_block": 2,
                                  "coarse_fraction": 0.5},
    # the eighth round: a smaller random start (noise_scale), fixed before its results
    "sample2-const-avg0.5-noise0.3": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "noise_scale": 0.3},
    "sample2-const-avg0.5-noise0.1": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "noise_scale": 0.1},
    "sample2-const-avg0.5-noise0.03": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "noise_scale": 0.03},
    "sample1-const-avg0.5-noise0.1": {"area_samples": 1, "lr": 0.1, "average_tail": 0.5, "noise_scale": 0.1},
    # the tenth round: start scales between fastest's 0.1 and the proto's 1, fixed before their results
    "sample2-const-avg0.5-noise0.5": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "noise_scale": 0.5},
    "sample2-const-avg0.5-noise0.7": {"area_samples": 2, "lr": 0.1, "average_tail": 0.5, "noise_scale": 0.7},
}
#: the candidates of the seventh to tenth rounds from seed 1 (another start and other area draws):
#: their evaluation reads each method as the mean of its two seeds' maps' Overall per image (:func:`seed_means`)
TWO_SEEDS = ("sample2-const-lr0.2-avg0.5", "sample1-const-avg0.5", "sample2-const-avg0.75",
             "sample2-const-avg0.5-c2f4", "sample2-const-avg0.5-c2f2", "sample2-const-avg0.5-noise0.3",
             "sample2-const-avg0.5-noise0.1", "sample2-const-avg0.5-noise0.03", "sample1-const-avg0.5-noise0.1",
             "sample2-const-avg0.5-noise0.5", "sample2-const-avg0.5-noise0.7")
FAMILIES.update({f"{family}-seed1": {**FAMILIES[family], "seed": 1} for family in TWO_SEEDS})
SEEDS = " (seeds 0 and 1)"             # the name of a method's two-seed mean
DEFAULT_CUTS = (12, 25, 50, 100)      # iterations of the default whose maps are kept


def method_options(name: str) -> dict:
    """SaS options of ``FAMILY@PASSES`` (or ``default``), with ``iterations`` filled in; None for
    a baseline (``Gradient``, ``Guided BP``, ``IG``, ``GradCAM``, ``EP``)."""
    if name in BASELINE_PASSES and name not in BASELINES:
        raise SystemExit(f"{name} needs TorchRay: pip install --no-deps torchray")
    if name in BASELINE_PASSES:
        return None
    if name == "default":
        return {"preset": BASE}
    family, _, passes = name.partition("@")
    if family not in FAMILIES or not passes.isdigit():
        raise SystemExit(f"unknown method {name!r}: use default or FAMILY@PASSES, FAMILY in {list(FAMILIES)}")
    options = {"preset": BASE, **FAMILIES[family]}
    config = make_config(**options)
    options["iterations"] = (int(passes) - config.init_passes()) // config.passes_per_iteration()
    return options


def run(name, model, images, labels, batch, precision) -> dict:
    """``{method: (maps N x H x W, passes per image)}``: the method, and for ``default`` its cuts."""
    options = method_options(name)
    if options is None:
        maps = [BASELINES[name](model, images[start:start + batch], labels[start:start + batch])
                for start in range(0, len(images), batch)]
        return {name: (torch.cat(maps), BASELINE_PASSES[name])}
    trace_iterations = DEFAULT_CUTS if name == "default" else ()
    maps, snaps, passes = [], [], None
    for start in range(0, len(images), batch):
        sal, trace = sas_fast.attribute(model, images[start:start + batch], labels[start:start + batch],
                                        precision=precision, return_trace=True, progress=None,
                                        trace_iterations=trace_iterations, **options)
        maps.append(sal)
        snaps.append(trace.saliency)
        passes = int(trace.passes[0])
    out = {name: (torch.cat(maps), passes)}
    if name == "default":
        per_iteration = make_config(BASE).passes_per_iteration()
        snaps = torch.cat(snaps, dim=1)
        for i, it in enumerate(DEFAULT_CUTS):
            out[f"cut@{it * per_iteration}"] = (snaps[i], it * per_iteration)
    return out


def add(results: dict, key: str, new: dict) -> None:
    """Store ``new`` as ``results[key]``, or append its images to those already there (means of
    ins / dele / seconds weighted by the image counts)."""
    old = results.get(key)
    if old is None:
        results[key] = new
        return
    n, m = len(old["overall"]), len(new["overall"])
    for field in ("ins", "dele", "seconds"):
        if old[field] is not None:
            old[field] = (n * old[field] + m * new[field]) / (n + m)
    old["overall"] += new["overall"]


def seed_means(results: dict) -> dict:
    """``results`` and, for every ``FAMILY@P`` stored with ``FAMILY-seed1@P``, ``FAMILY@P (seeds 0 and 1)``:
    per image the mean Overall of the two seeds' maps (the expected quality of the method, less
    the run-to-run spread of one seed)."""
    out = dict(results)
    for name, r in results.items():
        family, _, passes = name.partition("@")
        other = results.get(f"{family}-seed1@{passes}")
        if passes and other is not None and len(other["overall"]) == len(r["overall"]):
            secs = [x["seconds"] for x in (r, other) if x.get("seconds") is not None]
            out[name + SEEDS] = {"passes": r["passes"], "overall": np.add(r["overall"], other["overall"]) / 2,
                                 "seconds": sum(secs) / len(secs) if secs else None}
    return out


def markdown(data: dict, reference: str) -> str:
    results = seed_means(data["results"])
    cuts = {r["passes"]: r for k, r in results.items() if k.startswith("cut@") or k == "default"}
    lines = [data["header"], "",
             f"| method | passes / image | Overall ± se | paired Δ vs {reference} (wins) "
             "| paired Δ vs default cut at equal passes (within 10 %) | s / image |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in sorted(results.items(), key=lambda kv: (kv[1]["passes"], kv[0])):
        o = np.asarray(r["overall"])
        ref = results.get(reference)
        vs_ref = paired(o, ref["overall"]) if ref is not None and name != reference else "-"
        near = [p for p in cuts if 0.9 * r["passes"] <= p <= r["passes"]]   # 432 stands for 450
        cut = cuts[max(near)] if near else None
        vs_cut = paired(o, cut["overall"]) if cut is not None and cut is not r else "-"
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "(from default)"
        lines.append(f"| {name} | {r['passes']} | {o.mean():.3f} ± {o.std(ddof=1) / np.sqrt(o.size):.3f} "
                     f"| {vs_ref} | {vs_cut} | {secs} |")
    return "\n".join(lines) + "\n"


def precision_suffix(precisions) -> str:
    """What a row's setting adds for runs not in bf16 (the studies' precision): ``", SaS fp32"``."""
    return "" if set(precisions) <= {"bf16"} else f", SaS {'/'.join(sorted(set(precisions)))}"


def pooled(out: Path, split: str, reference: str) -> tuple:
    """(markdown table, rows): every method's paired Δ Overall against ``reference``, pooled over
    the settings' ``fast_<split>_*.json`` files in ``out`` that hold both (images paired within
    their setting), best first; the adoption rules of ``benchmarks/studies/rules.md`` read it. The
    rows' setting names the SaS precision of runs not in bf16 (:func:`precision_suffix`)."""
    settings, diffs, precisions = [], {}, set()
    for path in sorted(out.glob(f"fast_{split}_*.json")):
        data = json.loads(path.read_text())
        results = seed_means(data["results"])
        if reference not in results:
            continue
        settings.append(path.stem.replace(f"fast_{split}_", ""))
        precisions.add(data.get("precision", "bf16"))
        for name, r in results.items():
            if name != reference:
                diffs.setdefault(name, []).append(np.subtract(r["overall"], results[reference]["overall"]))
    lines = [f"pooled over {', '.join(settings)} ({split} images)", "",
             f"| method | settings | N | pooled paired Δ vs {reference} (wins) |", "| --- | --- | --- | --- |"]
    rows, suffix = [], precision_suffix(precisions)
    pooled_diffs = [(name, np.concatenate(parts), len(parts)) for name, parts in diffs.items()]
    for name, d, count in sorted(pooled_diffs, key=lambda x: -x[1].mean()):
        value = paired(d, 0, digits=4)
        lines.append(f"| {name} | {count} | {d.size} | {value} |")
        rows.append({"setting": f"{count} settings pooled, {split} images, N = {d.size}{suffix}",
                     "metric": f"{name} − {reference}, Overall, paired", "value": value})
    return "\n".join(lines) + "\n", rows


#: the presets the study chose, by their study names
PRESET_NAMES = {"sample3-cosine@1800": "fast", "sample2-const-avg0.5-noise0.5@450": "fastest"}
SETTING_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "resnet8": "ResNet8", "vgg16": "VGG16"}


def result_rows(data: dict, reference: str, dataset: str, arch: str, methods) -> list:
    """Rows of ``benchmarks/results/rows/presets.jsonl`` (``benchmarks/rows.py``): each of ``methods``
    paired against ``reference`` on the images both scored; the setting names the SaS model's
    precision when the runs were not bf16 (the studies' precision)."""
    results, out = seed_means(data["results"]), []
    suffix = precision_suffix({data.get("precision", "bf16")})
    for name in methods:
        if name == reference or name not in results or reference not in results:
            continue
        r = results[name]
        preset = PRESET_NAMES.get(name.removesuffix(SEEDS))
        label = f"{preset} = {name}" if preset else name
        out.append({"setting": f"{SETTING_NAMES[dataset]} / {SETTING_NAMES[arch]}, N = {len(r['overall'])}{suffix}",
                    "metric": f"{label} ({r['passes']:,} passes) − {reference}, Overall, paired",
                    "value": paired(r["overall"], results[reference]["overall"])})
    return out


def frontier(out: Path, figure: Path, families: str) -> str:
    """The frontier table (markdown) and figure from every ``fast_evaluation_*.json`` in ``out``:
    Overall against passes for the default cut short, for each SaS family in ``families``
    (comma-separated) and for each baseline run on the same images; then, per setting and SaS
    budget, the best SaS point against the best baseline with at most that many passes."""
    from sas_fast.viz import plot_frontier

    fams = [f.strip() for f in families.split(",") if f.strip()]
    panels, lines, checks = {}, ["| setting | N | curve | " + " | ".join(["passes: Overall ± se"] * 5) + " |",
                                 "| --- | --- | --- | --- | --- | --- | --- | --- |"], []
    for path in sorted(out.glob("fast_evaluation_*.json")):
        results = json.loads(path.read_text())["results"]
        setting = path.stem.replace("fast_evaluation_", "").replace("_", " / ")
        curves = {"default cut short": [], **{f: [] for f in fams}, **{b: [] for b in BASELINES if b in results}}
        for name, r in results.items():
            curve = ("default cut short" if name == "default" or name.startswith("cut@") else
                     name if name in BASELINES else name.split("@")[0] if name.split("@")[0] in fams else None)
            if curve is not None:
                o = np.asarray(r["overall"])
                curves[curve].append((r["passes"], o.mean(), o.std(ddof=1) / np.sqrt(o.size)))
        curves = {c: pts for c, pts in curves.items() if pts}
        panels[setting] = {(f"{c} ({BASELINE_PASSES[c]:,} pass{'es' if BASELINE_PASSES[c] > 1 else ''})"
                            if c in BASELINES else c): pts for c, pts in curves.items()}
        n = len(next(iter(results.values()))["overall"])
        for curve, points in curves.items():
            cells = [f"{p}: {m:.3f} ± {e:.3f}" for p, m, e in sorted(points)]
            lines.append(f"| {setting} | {n} | {curve} | " + " | ".join(cells + [""] * (5 - len(cells))) + " |")
        sas = [pt for c, pts in curves.items() if c not in BASELINES for pt in pts]
        base = [(p, m, c) for c in BASELINES if c in curves for p, m, _ in curves[c]]
        for budget in sorted({p for p, _, _ in sas}):
            best = max((pt for pt in sas if pt[0] <= budget), key=lambda pt: pt[1])
            rival = max((pt for pt in base if pt[0] <= budget), key=lambda pt: pt[1], default=None)
            if rival is not None:
                checks.append(f"| {setting} | {budget} | {best[1]:.3f} ({best[0]}) | {rival[1]:.3f} ({rival[2]}, "
                              f"{rival[0]}) | {'SaS' if best[1] > rival[1] else rival[2]} |")
    plot_frontier(panels, figure, "Deletion-game Overall per model image-pass")
    return ("\n".join(lines) + "\n\n| setting | budget (passes) | best SaS at <= budget (passes) | best baseline at <= budget | ahead |\n| --- | --- | --- | --- | --- |\n"
            + "\n".join(checks) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["mnist", "cifar10"], default="cifar10")
    ap.add_argument("--arch", choices=["resnet8", "vgg16"], default="resnet8")
    ap.add_argument("--split", choices=["calibration", "evaluation"], default="calibration")
    ap.add_argument("--n", type=int, default=None, help="images of a new run (default 16); a run "
                    "already in --out keeps its images")
    ap.add_argument("--more", type=int, default=0, metavar="M",
                    help="add M evaluation images, stratified among those not yet in --out's file, to "
                         "every method already there (then --methods is ignored)")
    ap.add_argument("--methods", default="default,sample3@1800")
    ap.add_argument("--rows", action="store_true", help="also append the paired differences of --methods to "
                    "the results rows (benchmarks/rows.py)")
    ap.add_argument("--reference", default=None, help="method the paired Δ is taken against "
                    "(default: 'default' if run, else cut@1800)")
    ap.add_argument("--fresh", type=Path, nargs="+", default=(), metavar="DIR", help="a new calibration run "
                    "takes images that none of the DIRs' calibration runs of the same setting used")
    ap.add_argument("--batch", type=int, default=16, help="images per attribute call")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--shared", type=Path, default=None, help="folder with data/ and models/ (benchmarks/paths.py)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--frontier", metavar="FAMILIES", help="only draw the frontier of FAMILIES (comma-separated) against the "
                    "default cut short from the evaluation runs in --out (table printed, figure to --figure)")
    ap.add_argument("--figure", type=Path, default=Path("frontier.png"))
    ap.add_argument("--pooled", action="store_true", help="only pool the paired Δ against --reference over "
                    "the --split runs in --out (table printed and written to --out/pooled_<split>.md; --rows)")
    args = ap.parse_args(argv)
    args.shared = shared_dir(args.shared)
    if args.frontier:
        print(frontier(args.out, args.figure, args.frontier))
        return 0
    if args.pooled:
        table, rows = pooled(args.out, args.split, args.reference or "default")
        (args.out / f"pooled_{args.split}.md").write_text(table)
        if args.rows:
            append_rows("presets", rows)
        print(table)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]    # a two-seed mean is read, not run
    runs = [name for name in names if not name.endswith(SEEDS)]
    for name in names:
        method_options(name.removesuffix(SEEDS))
    avoid = [folder / f"fast_{args.split}_{args.dataset}_{args.arch}.json" for folder in args.fresh]
    if avoid and args.split != "calibration":
        raise SystemExit("--fresh draws new calibration images: it needs --split calibration")
    for run_file in avoid:
        if not run_file.exists():
            raise SystemExit(f"--fresh: no calibration run {run_file} whose images to avoid")

    model = load_paper_model(args.arch, args.dataset, args.shared / "models")
    with np.load(args.shared / "data" / args.dataset / "test.npz") as archive:
        labels_all = archive["labels"]
    path = args.out / f"fast_{args.split}_{args.dataset}_{args.arch}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = json.loads(path.read_text())
        indices = np.asarray(data["indices"])
    else:
        n = args.n or 16
        used = [i for run_file in avoid for i in json.loads(run_file.read_text())["indices"]]
        indices = (calibration_indices(labels_all, n, exclude=used) if args.split == "calibration"
                   else stratified_indices(labels_all, n, exclude_mod=(10, 1)))
        data = {"indices": indices.tolist(), "results": {}}
    if args.n is not None and args.n != len(data["indices"]):
        raise SystemExit(f"{path} holds {len(data['indices'])} images, not --n {args.n}; use another --out "
                         "(or --more to add images)")
    if args.more:
        if args.split != "evaluation" or not data["results"]:
            raise SystemExit("--more adds evaluation images to an existing evaluation run in --out")
        more = stratified_indices(labels_all, args.more, exclude_mod=(10, 1), exclude=data["indices"])
        runs = names = [name for name in data["results"] if not name.startswith("cut@")]
        indices = np.concatenate([data["indices"], more])
    new = indices[len(data["indices"]):] if args.more else indices
    images, labels = load_npz_dataset(args.dataset, args.shared / "data", new)
    todo = runs if args.more else [name for name in runs if name not in data["results"]]
    if todo:                                        # the header says how the stored runs were made
        data["header"] = (f"### {args.dataset} / {args.arch}, {args.split} images: N = {len(indices)}, SaS model "
                          f"{args.precision}, CPU ({torch.backends.cpu.get_cpu_capability()}, "
                          f"{torch.get_num_threads()} threads)")
        data["precision"] = args.precision
    for name in todo:
        start = time.perf_counter()
        outputs = run(name, model, images, labels, args.batch, args.precision)
        seconds = (time.perf_counter() - start) / len(images)
        for key, (maps, passes) in outputs.items():
            res: GameResult = deletion_game(model, images, maps, labels)
            add(data["results"], key, {"passes": passes, "overall": res.per_image_overall.tolist(),
                                       "ins": res.ins, "dele": res.dele,
                                       "seconds": seconds if key == name else None})
            print(f"{key:22s} passes {passes:5d}  Overall {res.overall:.3f} ± {res.overall_se:.3f}  "
                  f"({seconds:.1f} s/image)", flush=True)
        if not args.more:       # resumable per method; --more writes once, when every method has its images
            path.write_text(json.dumps(data, indent=1))
    data["indices"] = indices.tolist()
    path.write_text(json.dumps(data, indent=1))
    reference = args.reference or ("default" if "default" in data["results"] else "cut@1800")
    table = markdown(data, reference)
    path.with_suffix(".md").write_text(table)
    if args.rows:
        append_rows("presets", result_rows(data, reference, args.dataset, args.arch, names))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
