"""The paper's table 2 at ImageNet resolution: SaS and the baselines on real ImageNet photos.

    python -m benchmarks.studies.imagenet_study --methods fast-imagenet,fast --n 64 --threads 1
    python -m benchmarks.studies.imagenet_study --methods gradient,guided_backprop,grad_cam --n 64
    python -m benchmarks.studies.imagenet_study --report                     # the table from the rows
    python -m benchmarks.studies.imagenet_study --report --methods fast,fastest,cut@1800   # some of them

Photos: a labelled folder (``labels.csv`` or the ImageFolder layout, :mod:`sas_fast.dataset.sources`;
default the 500 photos of ``shared/data/imagenet_samples``), the ImageNet evaluation crop (short side
256, centre 224), the true label as target, the bundled EfficientNet-Lite0. The photo order is a
fixed seeded permutation (``numpy.random.default_rng(0)``): the evaluation split takes photos from
its front (``--n`` of them), the calibration split from its back, so the two never meet.

Methods: a SaS preset (``fast-imagenet``, ``fast``, ...; model in ``--precision``, bf16 by default)
or a baseline of :mod:`sas_fast.baselines` (fp32 model). ``fast-imagenet`` also records the
default schedule cut short at 12, 25, 50 and 100 iterations (``cut@432`` ... ``cut@3600``,
``SaSTrace.saliency``) at no extra cost. Every map is scored by the deletion game (docs/SPEC.md section 5:
11 ratios, NLI; the map as stored, float16; the noise keyed by the photo's index) with the fp32 model, and one JSON row per photo is appended to
``<out>/<split>_<method>.jsonl`` as soon as it is done (passes, seconds, CPU seconds, Ins, Del,
Overall, both curves; the method's own row last), so a run can be stopped and resumed at any photo. Maps are kept as
float16 ``.npy`` under ``--maps`` (not in the repository).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import sas_fast
from benchmarks.common import paired, sync
from benchmarks.paths import shared_dir
from benchmarks.rows import append as append_rows
from sas_fast import baselines
from sas_fast.config import PRESETS, make_config
from sas_fast.dataset.sources import open_source
from sas_fast.evaluate import GameResult, deletion_game
from sas_fast.models.efficientnet import LITE_SIZES, efficientnet_lite, preprocess_imagenet
from sas_fast.precision import cpu_capability
from sas_fast.viz import attribution_grid, plot_game_curves

BASELINES = {**baselines.BASELINES, "extremal_perturbation": baselines.extremal_perturbation}
#: model image-passes per photo of the baselines (IG: its steps; EP: its iterations, one area)
BASELINE_PASSES = {"gradient": 1, "guided_backprop": 1, "grad_cam": 1, "integrated_gradients": 50,
                   "extremal_perturbation": 800}
CUTS = (12, 25, 50, 100)          # iterations of fast-imagenet whose maps are also scored


def photo_order(count: int) -> np.ndarray:
    """The fixed order of the photos: evaluation from the front, calibration from the back."""
    return np.random.default_rng(0).permutation(count)


def split_indices(count: int, split: str, n: int) -> np.ndarray:
    order = photo_order(count)
    return order[:n] if split == "evaluation" else order[::-1][:n]


def run_method(method: str, model, x: torch.Tensor, labels: list, precision: str,
               backend: str = "auto", quick: bool = False) -> list:
    """One ``{row name: (map H x W, passes)}`` per photo of ``x`` (``B x 3 x S x S``). ``quick``:
    SaS cut to 2 iterations (its cut at 1), EP to 5 steps (a rehearsal of the pipeline only)."""
    if method in BASELINES:
        options = {"max_iter": 5} if quick and method == "extremal_perturbation" else {}
        maps = BASELINES[method](model, x, labels, **options)
        return [{method: (m, BASELINE_PASSES[method])} for m in maps]
    cuts = ((1,) if quick else CUTS) if method == "fast-imagenet" else ()
    saliency, trace = sas_fast.attribute(model, x, labels, preset=method, precision=precision,
                                         backend=backend, return_trace=True, trace_iterations=cuts,
                                         progress=None, **({"iterations": 2} if quick else {}))
    per_iteration = make_config(method).passes_per_iteration()
    out = []
    for b in range(x.shape[0]):
        maps = {method: (saliency[b], int(trace.passes[b]))}
        for i, it in enumerate(trace.iterations if cuts else ()):
            maps[f"cut@{it * per_iteration}"] = (trace.saliency[i][b], it * per_iteration)
        out.append(maps)
    return out


def read_rows(path: Path) -> dict:
    """``{photo index: row}`` of a rows file (a torn last line, from a killed run, is ignored)."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows[row["index"]] = row
    return rows


def append_row(path: Path, row: dict) -> None:
    """One line in one ``write`` on an append-only descriptor: shards may share the file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        shard, shards = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be I/N with integers, got {text!r}") from None
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return shard, shards


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def stored_rows(out: Path, split: str, only=None) -> dict:
    """``{method: {photo index: row}}`` of the rows files in ``out`` (``only``: just these methods)."""
    methods = {p.stem[len(split) + 1:]: read_rows(p) for p in sorted(out.glob(f"{split}_*.jsonl"))}
    if only is not None:
        missing = sorted(set(only) - set(methods))
        if missing:
            raise SystemExit(f"--methods: no rows of {missing} in {out}; there are {sorted(methods)}")
        methods = {m: methods[m] for m in only}
    return {m: rows for m, rows in methods.items() if rows}


def report(out: Path, split: str, reference: str, only=None) -> str:
    """Markdown table of every method in ``out`` (``only``: of these) on the photos all of them
    share, with paired differences against ``reference``."""
    methods = stored_rows(out, split, only)
    if not methods:
        return f"no rows for split {split!r} in {out}\n"
    common = sorted(set.intersection(*(set(rows) for rows in methods.values())))
    lines = [f"{split} photos shared by every method: N = {len(common)}", "",
             f"| method | passes / photo | Ins | Del | Overall ± se | paired Δ vs {reference} (wins) "
             "| s / photo | CPU-s / photo |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    ref = methods.get(reference)
    for m, rows in sorted(methods.items(), key=lambda kv: -np.mean([kv[1][i]["overall"] for i in common])):
        o = np.array([rows[i]["overall"] for i in common])
        ins = np.mean([rows[i]["ins"] for i in common])
        dele = np.mean([rows[i]["del"] for i in common])
        vs = paired(o, np.array([ref[i]["overall"] for i in common])) if ref and m != reference else "-"
        secs = [rows[i]["seconds"] for i in common if rows[i].get("seconds") is not None]
        cpu = [rows[i]["cpu_seconds"] for i in common if rows[i].get("cpu_seconds") is not None]
        lines.append(f"| {m} | {rows[common[0]]['passes']} | {ins:.3f} | {dele:.3f} | {o.mean():.3f} ± "
                     f"{o.std(ddof=1) / np.sqrt(o.size) if o.size > 1 else float('nan'):.3f} | {vs} | "
                     f"{np.mean(secs) if secs else float('nan'):.1f} | "
                     f"{np.mean(cpu) if cpu else float('nan'):.1f} |")
    return "\n".join(lines) + "\n"


def result_rows(out: Path, split: str, reference: str, model: str, only=None) -> list:
    """Rows for ``benchmarks/results/rows/imagenet.jsonl`` (``benchmarks/rows.py``): every method's
    Overall ± se, its cost, and its paired difference against ``reference``, on the shared photos
    (the ``cut@`` rows only when named in ``only``)."""
    methods = {m: rows for m, rows in stored_rows(out, split, only).items()
               if only is not None or not m.startswith("cut@")}
    common = sorted(set.intersection(*(set(rows) for rows in methods.values())))
    out_rows = []
    for m, rows in sorted(methods.items(), key=lambda kv: -np.mean([kv[1][i]["overall"] for i in common])):
        o = np.array([rows[i]["overall"] for i in common])
        passes = rows[common[0]]["passes"]
        value = (f"{o.mean():.3f} ± {o.std(ddof=1) / np.sqrt(o.size):.3f} ({passes:,} pass"
                 f"{'es' if passes != 1 else ''}, {np.mean([rows[i]['seconds'] for i in common]):.1f} s per photo)")
        if m != reference and reference in methods:
            value += "; Δ vs " + reference + " " + paired(o, np.array([methods[reference][i]["overall"] for i in common]))
        out_rows.append({"setting": f"{model}, N = {len(common)}", "metric": f"Overall, {m}", "value": value})
    return out_rows


def figures(args, source, model, device: torch.device) -> None:
    """Figure 4 (mean insertion / deletion curves of each method on the photos all share) and a
    compare grid of the first ``args.grid`` of those photos, from the rows in ``args.out``; a map
    missing from ``args.maps`` is computed (and kept there). Only the current presets and the
    baselines are drawn: rows under another name (a preset's earlier setting, kept for the
    table under its study family's name) could not be recomputed."""
    rows = {m: r for m, r in stored_rows(args.out, args.split).items() if m in PRESETS or m in BASELINES}
    if not rows:
        raise SystemExit(f"no rows for split {args.split!r} in {args.out}")
    common = sorted(set.intersection(*(set(r) for r in rows.values())))
    order = sorted(rows, key=lambda m: -np.mean([rows[m][i]["overall"] for i in common]))
    passes = {m: rows[m][common[0]]["passes"] for m in order}
    label = {m: f"{passes[m]:,} pass{'es' if passes[m] != 1 else ''}" for m in order}
    curves = {f"{m} ({label[m]})": GameResult(
        torch.linspace(0, 1, 11, dtype=torch.float64),
        torch.tensor([rows[m][i]["insertion"] for i in common], dtype=torch.float64),
        torch.tensor([rows[m][i]["deletion"] for i in common], dtype=torch.float64),
        torch.tensor([rows[m][i]["label"] for i in common])) for m in order}
    args.figures.mkdir(parents=True, exist_ok=True)
    plot_game_curves(curves, args.figures / f"imagenet_curves_lite{args.lite}.png",
                     f"EfficientNet-Lite{args.lite}, {len(common)} ImageNet photos")
    shown, grid = [], []
    photos = [i for i in split_indices(len(source), args.split, len(source)).tolist() if i in common]
    for index in photos[:args.grid]:
        x, image = preprocess_imagenet(source.load(index), size=LITE_SIZES[args.lite], crop=True)
        shown.append(image.numpy())
        grid.append([])
        for method in order:
            path = args.maps / method / f"{index:04d}.npy"
            if not path.exists():
                saliency = run_method(method, model, x.to(device), [rows[method][index]["label"]],
                                      args.precision, args.backend)[0][method][0]
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, saliency.half().cpu().numpy())
            saliency = torch.from_numpy(np.load(path).astype(np.float32))
            saliency -= saliency.min()
            grid[-1].append(saliency / saliency.max().clamp_min(1e-12))    # shown min-max scaled
    names = [f"{m}\n{label[m]}" for m in order]
    attribution_grid(shown, grid, order, args.figures / f"imagenet_compare_grid_lite{args.lite}.jpg",
                     col_titles=names,
                     row_titles=[Path(source.name(i)).stem.split("_", 2)[-1] for i in photos[:args.grid]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=None,
                    help="labelled photo folder (default: the shared imagenet_samples, benchmarks/paths.py)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated presets and baselines to run (default fast-imagenet,fast); with "
                    "--report: only these methods' rows (default every method in --out)")
    ap.add_argument("--split", choices=["evaluation", "calibration"], default="evaluation")
    ap.add_argument("--n", type=int, default=64, help="photos of the split (default 64)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="SaS's model precision")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/imagenet"))
    ap.add_argument("--maps", type=Path, default=Path("out/imagenet_maps"))
    ap.add_argument("--report", action="store_true", help="only print the table of --out's rows")
    ap.add_argument("--rows", action="store_true", help="with --report: also append the table to the results "
                    "rows (benchmarks/rows.py; then python -m benchmarks.render_results)")
    ap.add_argument("--reference", default="fast-imagenet")
    ap.add_argument("--lite", type=int, choices=sorted(LITE_SIZES), default=0,
                    help="EfficientNet-Lite variant (default 0; input size %s)" % LITE_SIZES)
    ap.add_argument("--device", default="cpu", help="torch device of the model and the maps (default cpu)")
    ap.add_argument("--batch", type=int, default=1,
                    help="photos per call (SaS and the batched baselines; EP takes one at a time)")
    ap.add_argument("--backend", default="auto", choices=["auto", "reference", "triton", "cpp"],
                    help="SaS's ops backend (default auto)")
    ap.add_argument("--quick", action="store_true",
                    help="SaS at 2 iterations, EP at 5 steps: a rehearsal of the pipeline, not a result")
    ap.add_argument("--figures", type=Path, metavar="DIR",
                    help="only draw the curves and the compare grid of --out's methods into DIR")
    ap.add_argument("--grid", type=int, default=4, help="photos in the compare grid (default 4)")
    ap.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                    help="only every N-th photo of the split from the I-th (processes that share --out)")
    args = ap.parse_args(argv)
    args.images = args.images or shared_dir() / "data" / "imagenet_samples"
    if args.batch < 1:
        ap.error(f"--batch must be an integer >= 1, got {args.batch}")
    methods = [m.strip() for m in (args.methods or "fast-imagenet,fast").split(",") if m.strip()]
    if args.report:
        reference = [args.reference] if (args.out / f"{args.split}_{args.reference}.jsonl").exists() else []
        only = None if args.methods is None else list(dict.fromkeys(methods + reference))
        print(report(args.out, args.split, args.reference, only))
        if args.rows:
            append_rows("imagenet", result_rows(args.out, args.split, args.reference,
                                                f"EfficientNet-Lite{args.lite}", only))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [m for m in methods if m not in BASELINES and m not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}: a preset {sorted(PRESETS)} or a baseline "
                         f"{sorted(BASELINES)}")
    source = open_source(args.images)
    if source.labels is None:
        raise SystemExit(f"{args.images} has no labels (labels.csv or ImageFolder layout)")
    device = torch.device(args.device)
    model = efficientnet_lite(args.lite).to(device)
    size = LITE_SIZES[args.lite]
    if args.figures:
        figures(args, source, model, device)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"model": f"efficientnet-lite{args.lite}", "device": device_name(device),
               "cpu": cpu_capability(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    shard, shards = args.shard
    for method in methods:
        path = args.out / f"{args.split}_{method}.jsonl"
        todo = [i for i in split_indices(len(source), args.split, args.n).tolist()[shard::shards]
                if i not in read_rows(path)]
        batch = 1 if method == "extremal_perturbation" else args.batch
        for first in range(0, len(todo), batch):
            indices = todo[first:first + batch]
            x = torch.cat([preprocess_imagenet(source.load(i), size=size, crop=True)[0]
                           for i in indices]).to(device)
            labels = [int(source.labels[i]) for i in indices]
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            photo_maps = run_method(method, model, x, labels, args.precision, args.backend, args.quick)
            sync(device)
            seconds = (time.perf_counter() - start) / len(indices)
            cpu = (time.process_time() - cpu_start) / len(indices)
            for b, (index, label, maps) in enumerate(zip(indices, labels, photo_maps)):
                for name, (saliency, passes) in sorted(maps.items(), key=lambda kv: kv[0] == method):
                    saliency = saliency.half()            # scored as stored, float16
                    game = deletion_game(model, x[b:b + 1], saliency[None].float(), label,
                                         image_ids=[index])
                    row = {"index": index, "file": source.name(index), "label": label, "passes": passes,
                           "seconds": round(seconds, 3) if name == method else None,
                           "cpu_seconds": round(cpu, 3) if name == method else None,
                           "batch": len(indices), "ins": game.ins, "del": game.dele,
                           "overall": game.overall, "insertion": game.insertion[0].tolist(),
                           "deletion": game.deletion[0].tolist(),
                           "precision": args.precision if name not in BASELINES else "fp32",
                           "backend": args.backend if name not in BASELINES else None, **machine}
                    (args.maps / name).mkdir(parents=True, exist_ok=True)
                    np.save(args.maps / name / f"{index:04d}.npy", saliency.cpu().numpy())
                    append_row(args.out / f"{args.split}_{name}.jsonl", row)
                print(f"{method} photo {index} ({source.name(index)}): Overall "
                      f"{game.overall:.3f}, {seconds:.2f} s", flush=True)
    print(report(args.out, args.split, args.reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
