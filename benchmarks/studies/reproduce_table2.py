"""Reproduce the paper's table 2 (deletion / insertion game, docs/SPEC.md section 5) for one setting.

    python -m benchmarks.studies.reproduce_table2 --dataset cifar10 --arch resnet8 --n 512 --device cuda

The same N test images (stratified by class, never a calibration image: indices = 1 mod 10
are kept for calibration, see calibrate_sas.py) for every method, ground-truth labels as
targets. Writes to --out: ``table2_<dataset>_<arch>.md`` (Ins, Del, Overall with standard
errors, next to the paper's numbers), ``.json`` (all curves), ``curves_*.png`` (figure 4) and
``profiles_*.png`` (figure 3: SaS's score profiles over the iterations, first image).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import sas_fast
from benchmarks.rows import append as append_rows
from benchmarks.paths import shared_dir
from sas_fast import baselines
from sas_fast.config import make_config, parse_option
from sas_fast.evaluate import GameResult, deletion_game
from sas_fast.models import load_npz_dataset, load_paper_model, stratified_indices
from sas_fast.viz import plot_game_curves, plot_score_profiles


#: the paper's table 2 (Ins, Del, Overall) for the settings that exist here
PAPER = {
    ("mnist", "resnet8"): {"Guided BP": (0.691, 0.215, 0.476), "Gradient": (0.675, 0.284, 0.391),
                           "IG": (0.738, 0.474, 0.264), "GradCAM": (0.548, 0.290, 0.258),
                           "SaS": (0.663, 0.201, 0.463)},
    ("mnist", "vgg16"): {"Guided BP": (0.798, 0.268, 0.521), "Gradient": (0.827, 0.285, 0.542),
                         "IG": (0.899, 0.512, 0.386), "GradCAM": (0.555, 0.580, -0.025),
                         "SaS": (0.808, 0.259, 0.549)},
    ("cifar10", "resnet8"): {"Guided BP": (0.629, 0.264, 0.365), "Gradient": (0.544, 0.363, 0.181),
                             "IG": (0.563, 0.332, 0.231), "GradCAM": (0.577, 0.293, 0.284),
                             "SaS": (0.671, 0.236, 0.443)},
    ("cifar10", "vgg16"): {"Guided BP": (0.816, 0.347, 0.469), "Gradient": (0.761, 0.418, 0.343),
                           "IG": (0.821, 0.459, 0.370), "GradCAM": (0.562, 0.581, -0.019),
                           "SaS": (0.858, 0.243, 0.615)},
}

BASELINES = {"Gradient": baselines.gradient, "Guided BP": baselines.guided_backprop,
             "IG": baselines.integrated_gradients, "GradCAM": baselines.grad_cam}
if baselines.HAS_TORCHRAY:   # not in the paper's table; on request: --methods SaS,EP
    BASELINES["EP"] = baselines.extremal_perturbation


def run_method(name, fn, images, labels, batch, device):
    """Saliency ``N x H x W`` of one method, ``batch`` images per call."""
    maps = []
    for start in tqdm(range(0, len(images), batch), desc=name, leave=False):
        x = images[start:start + batch].to(device)
        maps.append(fn(x, labels[start:start + batch].to(device)).cpu())
    return torch.cat(maps)


def paired_gap(res, sas) -> str:
    """Overall of ``res`` minus SaS's on the same images: mean ± standard error over images."""
    if sas is None or res is sas:
        return "-"
    mean, se = res.paired_gap(sas)
    return f"{mean:+.3f} ± {se:.3f}"


def markdown(results: dict, paper: dict, header: str) -> str:
    lines = [header, "", "| method | Ins ↑ | Del ↓ | Overall ↑ | Overall − SaS (paired) | paper Ins / Del / Overall |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, res in results.items():
        p = paper.get(name)
        ref = " / ".join(f"{v:.3f}" for v in p) if p else "-"
        lines.append(f"| {name} | {res.ins:.3f} ± {res.ins_se:.3f} | {res.dele:.3f} ± {res.dele_se:.3f} "
                     f"| {res.overall:.3f} ± {res.overall_se:.3f} | {paired_gap(res, results.get('SaS'))} "
                     f"| {ref} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["mnist", "cifar10"], default="cifar10")
    ap.add_argument("--arch", choices=["resnet8", "vgg16"], default="resnet8")
    ap.add_argument("--n", type=int, default=512, help="test images (stratified by class)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iterations", type=int, default=200, help="SaS iterations (paper: 200)")
    ap.add_argument("--batch", type=int, default=32, help="images per SaS / baseline call")
    ap.add_argument("--methods", default="SaS,Gradient,Guided BP,IG,GradCAM")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--shared", type=Path, default=None, help="folder with data/ and models/ (benchmarks/paths.py)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--rows", action="store_true", help="also append the table to the results rows "
                    "(benchmarks/rows.py; then python -m benchmarks.render_results)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the table and curves from the .json of an earlier run (no model runs)")
    ap.add_argument("--sas", type=parse_option, action="append", default=[], metavar="NAME=VALUE",
                    help="a SaS option other than its default (SaSConfig field, e.g. window=5); repeatable")
    ap.add_argument("--update", action="store_true",
                    help="add or replace --methods in the .json of an earlier run on the same images "
                         "(e.g. SaS after a change of defaults); the other methods' results are kept")
    args = ap.parse_args(argv)
    args.shared = shared_dir(args.shared)
    if args.render_only:
        return render(args.out, f"{args.dataset}_{args.arch}")

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model = load_paper_model(args.arch, args.dataset, args.shared / "models").to(device)
    with np.load(args.shared / "data" / args.dataset / "test.npz") as archive:
        all_labels = archive["labels"]
    indices = stratified_indices(all_labels, args.n, exclude_mod=(10, 1))
    images, labels = load_npz_dataset(args.dataset, args.shared / "data", indices)
    tag = f"{args.dataset}_{args.arch}"
    options = {"preset": "paper-cifar", **dict(args.sas)}     # the paper's schedule unless --sas preset=...
    config = make_config(**options).resolved(*images.shape[-2:])
    traces = []

    def sas(x, t):
        sal, trace = sas_fast.attribute(model, x, t, iterations=args.iterations, backend=args.backend,
                                        precision=args.precision, return_trace=True, progress=None, **options)
        traces.append(trace)
        return sal

    methods = {"SaS": sas, **{k: (lambda f: lambda x, t: f(model, x, t))(f) for k, f in BASELINES.items()}}
    names = [m.strip() for m in args.methods.split(",")]
    if set(names) - set(methods):
        raise SystemExit(f"unknown --methods {sorted(set(names) - set(methods))}; choose from {list(methods)}")
    header = (f"### {args.dataset} / {args.arch}: N = {len(images)} test images, SaS "
              f"{args.iterations} iterations ({args.precision} model, window {config.window}, "
              f"max_blur {config.max_blur:.2f}), device {device.type}"
              + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    json_path = args.out / f"table2_{tag}.json"
    results, seconds = {}, {}
    if args.update:
        data, results = load_results(json_path)
        if data["indices"] != indices.tolist():
            raise SystemExit(f"--update: {json_path} holds other images than --n {args.n}")
        seconds = data.get("seconds_per_image", {})
        header = header if "SaS" in names else data["header"]
    for name in names:
        start = time.perf_counter()
        maps = run_method(name, methods[name], images, labels, args.batch, device)
        seconds[name] = (time.perf_counter() - start) / len(images)
        results[name] = deletion_game(model, images.to(device), maps.to(device), labels.to(device))
        print(f"{name:10s} Ins {results[name].ins:.3f}  Del {results[name].dele:.3f}  "
              f"Overall {results[name].overall:.3f} ± {results[name].overall_se:.3f}  "
              f"({seconds[name]:.2f} s/image)", flush=True)
        json_path.write_text(json.dumps({   # after every method: a cut run keeps its part
            "args": {k: str(v) for k, v in vars(args).items()}, "header": header, "indices": indices.tolist(),
            "seconds_per_image": seconds,
            "results": {k: {"ins": r.ins, "dele": r.dele, "overall": r.overall, "overall_se": r.overall_se,
                            "ratios": r.ratios.tolist(), "insertion": r.insertion.tolist(),
                            "deletion": r.deletion.tolist()}
                        for k, r in results.items()}}, indent=1))
    if traces:
        plot_score_profiles(traces[0], args.out / f"profiles_{tag}.png", title=f"SaS score profiles, {tag}")
    if args.rows:
        append_rows("table2", result_rows(args.dataset, args.arch, len(images), results))
    return render(args.out, tag)


SETTING_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "resnet8": "ResNet8", "vgg16": "VGG16"}


def result_rows(dataset: str, arch: str, n: int, results: dict) -> list:
    """The rows of ``benchmarks/results/rows/table2.jsonl`` (``benchmarks/rows.py``): Overall ± se of
    every method, the paper's value in brackets where it gave one."""
    paper = PAPER[(dataset, arch)]
    return [{"setting": f"{SETTING_NAMES[dataset]} / {SETTING_NAMES[arch]}, N = {n}", "metric": f"Overall, {name}",
             "value": f"{r.overall:.3f} ± {r.overall_se:.3f}"
                      + (f" ({paper[name][2]:.3f})" if name in paper else "")}
            for name, r in results.items()]


def load_results(path: Path) -> tuple[dict, dict]:
    """(the saved json, ``{method: GameResult}``) of an earlier run."""
    data = json.loads(path.read_text())
    results = {}
    for name, r in data["results"].items():
        ins, dele = (torch.tensor(r[k], dtype=torch.float64) for k in ("insertion", "deletion"))
        ratios = torch.tensor(r["ratios"], dtype=torch.float64) if "ratios" in r else \
            torch.linspace(0, 1, ins.shape[1], dtype=torch.float64)
        results[name] = GameResult(ratios=ratios, insertion=ins, deletion=dele,
                                   target=torch.zeros(ins.shape[0], dtype=torch.long))
    args = data["args"]   # runs before the header was saved:
    data.setdefault("header", f"### {args['dataset']} / {args['arch']}: N = {len(data['indices'])} test images, "
                              f"SaS {args['iterations']} iterations, device {args['device']}")
    return data, results


def render(out: Path, tag: str) -> int:
    """Write ``table2_<tag>.md`` and ``curves_<tag>.png`` from ``table2_<tag>.json``; print the table."""
    data, results = load_results(out / f"table2_{tag}.json")
    dataset, arch = tag.split("_")
    header = data["header"]
    table = markdown(results, PAPER[(dataset, arch)], header)
    (out / f"table2_{tag}.md").write_text(table)
    plot_game_curves(results, out / f"curves_{tag}.png", f"{dataset} / {arch}, N = {len(data['indices'])}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
