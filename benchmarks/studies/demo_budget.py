"""How many iterations does ``sas-fast explain --demo`` need? Quality of the demo schedule cut short.

    python -m benchmarks.studies.demo_budget --photos chelsea,astronaut,coffee,rocket,camera,clock
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.studies.demo_budget --timing

Quality: on scikit-image's bundled photos with the bundled EfficientNet-Lite0 (224 px, top-1
class), one run of the demo's schedule (``sas_fast.cli.DEMO_PRESET``: ``fast-imagenet``, the 7,200-pass
schedule) for ``--iterations`` steps keeps the
map after each of ``--cuts`` steps (``SaSTrace.saliency``; with ``lr_decay="none"`` the map after
n steps is exactly that of an n-iteration run). Each map's deletion-game Overall (docs/SPEC.md section 5)
and its Spearman rank correlation with the final map go to ``--out`` (a rerun skips the photos
already there) and a paired table to stdout.

Timing (``--timing``): CPU seconds (user + system) per iteration of the demo on chelsea at the
precision ``"auto"`` picks (threads: torch's setting, e.g. ``OMP_NUM_THREADS=1``), and the largest iteration count fitting 120 s at that rate.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
from pathlib import Path

import torch

import sas_fast
from sas_fast.cli import DEMO_PRESET
from sas_fast.evaluate import deletion_game
from sas_fast.models import efficientnet_lite0, preprocess_imagenet
from sas_fast.precision import cpu_capability, resolve_precision

from benchmarks.common import paired
from benchmarks.rows import append as append_rows
from benchmarks.studies.imagenet_fast_check import spearman

BUDGET_S = 120.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timing(model, image, target, timed: int) -> dict:
    """CPU s per demo iteration: (a run of 1 + ``timed`` iterations - a run of 1) / ``timed``, after a
    warm-up run, so the per-run setup (pyramid, cold threshold solve) is left out."""
    precision = resolve_precision("auto", torch.device("cpu")).precision
    cost = {}
    for iterations in (1, 1, 1 + timed):
        start = cpu_seconds()
        sas_fast.attribute(model, image, target, preset=DEMO_PRESET, iterations=iterations, precision=precision,
                           progress=False)
        cost[iterations] = cpu_seconds() - start
    per_iteration = (cost[1 + timed] - cost[1]) / timed
    return {"capability": cpu_capability(), "precision": precision, "threads": torch.get_num_threads(),
            "cpu_s_per_iteration": per_iteration, "iterations_in_budget": int(BUDGET_S // per_iteration)}


def quality(model, names, iterations: int, cuts: list, out: Path) -> dict:
    """Per photo: Overall and Spearman-vs-final of the map after each cut and the final map."""
    import skimage.data
    rows = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        if name in rows:
            continue
        image = preprocess_imagenet(getattr(skimage.data, name)())[0]
        with torch.no_grad():
            target = model(image).argmax(-1)
        final, trace = sas_fast.attribute(model, image, target, preset=DEMO_PRESET, iterations=iterations,
                                          precision="bf16", progress=False, return_trace=True,
                                          trace_iterations=cuts)
        maps = dict(zip(cuts, trace.saliency[:, 0])) | {iterations: final[0]}
        rows[name] = {str(n): {"overall": deletion_game(model, image, sal[None], target).overall,
                               "spearman_vs_final": spearman(sal, final[0])} for n, sal in maps.items()}
        print(name, {n: round(r["overall"], 3) for n, r in rows[name].items()}, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    return rows


def table(rows: dict, iterations: int) -> str:
    """Markdown: per cut, mean Overall, paired difference against the final map, mean Spearman."""
    lines = ["| iterations | passes | Overall (mean) | paired Δ vs final ± se (wins) | Spearman vs final |",
             "| --- | --- | --- | --- | --- |"]
    cuts = sorted({int(n) for r in rows.values() for n in r})
    for n in cuts:
        overall = [r[str(n)]["overall"] for r in rows.values()]
        lines.append(f"| {n} | {36 * n} | {statistics.mean(overall):.3f} | {_vs_final(rows, n, iterations)} | "
                     f"{statistics.mean(r[str(n)]['spearman_vs_final'] for r in rows.values()):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="chelsea,astronaut,coffee,rocket,camera,clock")
    ap.add_argument("--iterations", type=int, default=80, help="the current demo's iterations")
    ap.add_argument("--cuts", default="10,20,30,40,60")
    ap.add_argument("--timing", action="store_true", help="only time the demo's iterations")
    ap.add_argument("--timed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_budget.json"))
    ap.add_argument("--rows", action="store_true", help="also append the cuts' paired differences to the "
                    "results rows (benchmarks/rows.py)")
    args = ap.parse_args(argv)
    model = efficientnet_lite0()
    if args.timing:
        import skimage.data
        image = preprocess_imagenet(skimage.data.chelsea())[0]
        with torch.no_grad():
            target = model(image).argmax(-1)
        print(json.dumps(timing(model, image, target, args.timed)))
        return 0
    rows = quality(model, args.photos.split(","), args.iterations, [int(c) for c in args.cuts.split(",")], args.out)
    print(table(rows, args.iterations))
    if args.rows:
        append_rows("calibration", result_rows(rows, args.iterations))
    return 0


def result_rows(rows: dict, iterations: int) -> list:
    """Each cut's paired difference against the final map, as rows of ``benchmarks/results/rows/``."""
    out = []
    for n in sorted({int(n) for r in rows.values() for n in r} - {iterations}):
        out.append({"setting": f"the demo schedule on {len(rows)} bundled photos, EfficientNet-Lite0",
                    "metric": f"{n} iterations − {iterations}, Overall, paired",
                    "value": _vs_final(rows, n, iterations)})
    return out


def _vs_final(rows: dict, n: int, iterations: int) -> str:
    """The photos' paired Overall difference of the map after ``n`` iterations against the final one."""
    return paired([r[str(n)]["overall"] for r in rows.values()],
                  [r[str(iterations)]["overall"] for r in rows.values()])


if __name__ == "__main__":
    raise SystemExit(main())
