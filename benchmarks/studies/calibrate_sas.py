"""Calibrate the SaS defaults the paper leaves open, on calibration images only.

    python -m benchmarks.studies.calibrate_sas --dataset cifar10 --arch resnet8 --n 64 \
        --grid "lr=0.02,0.05,0.1,0.2" --grid "window=5,7,9" --grid "max_blur=2,2.857,4"

Calibration images are test indices = 1 mod 10 (stratified by class); reproduce_table2.py
never evaluates on them. One factor at a time: each ``--grid NAME=v1,v2,...`` varies one
SaSConfig field with the others at their defaults (``--combo NAME=v,NAME2=w`` changes several
together); every run reports the deletion-game Overall (docs/SPEC.md section 5) with its standard error,
and its paired difference from the defaults on the same images. Writes a markdown table to --out.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import sas_fast
from benchmarks.paths import shared_dir
from benchmarks.rows import append as append_rows
from benchmarks.studies.reproduce_table2 import SETTING_NAMES
from sas_fast.config import parse_value
from sas_fast.evaluate import deletion_game
from sas_fast.models import load_npz_dataset, load_paper_model, stratified_indices


def calibration_indices(labels: np.ndarray, n: int, exclude=()) -> np.ndarray:
    """``n`` test indices with ``i % 10 == 1``, stratified by class; none of ``exclude`` (images a
    study has used before, so a new calibration run gets fresh ones)."""
    pool = np.setdiff1d(np.flatnonzero(np.arange(labels.size) % 10 == 1), np.asarray(exclude, dtype=np.int64))
    return pool[stratified_indices(labels[pool], n)]


def parse_settings(grids, combos) -> list:
    """``[(label, {field: value})]``: one setting per value of each ``NAME=v1,v2`` grid, then one
    per ``NAME=v,NAME2=w`` combination (all of its fields changed together)."""
    settings = []
    for spec in grids:
        name, values = spec.split("=")
        settings += [(f"{name} = {v}", {name: parse_value(v)}) for v in values.split(",")]
    for spec in combos:
        options = {name: parse_value(v) for name, v in (part.split("=") for part in spec.split(","))}
        settings.append((", ".join(f"{k} = {v}" for k, v in options.items()), options))
    return settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["mnist", "cifar10"], default="cifar10")
    ap.add_argument("--arch", choices=["resnet8", "vgg16"], default="resnet8")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--grid", action="append", default=[], help="NAME=v1,v2,... (repeatable)")
    ap.add_argument("--combo", action="append", default=[],
                    help="NAME=v,NAME2=w: one run with all of these changed (repeatable)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="model precision during SaS")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shared", type=Path, default=None, help="folder with data/ and models/ (benchmarks/paths.py)")
    ap.add_argument("--out", type=Path, default=Path("results/calibration.md"))
    ap.add_argument("--rows", action="store_true", help="also append the paired differences to the results rows "
                    "(benchmarks/rows.py)")
    args = ap.parse_args(argv)
    args.shared = shared_dir(args.shared)

    device = torch.device(args.device)
    model = load_paper_model(args.arch, args.dataset, args.shared / "models").to(device)
    with np.load(args.shared / "data" / args.dataset / "test.npz") as archive:
        indices = calibration_indices(archive["labels"], args.n)
    images, labels = load_npz_dataset(args.dataset, args.shared / "data", indices)
    images, labels = images.to(device), labels.to(device)
    rows = [f"### Calibration, {args.dataset} / {args.arch}: N = {len(images)} images (index = 1 mod 10), "
            f"{args.iterations} iterations, SaS model precision {args.precision}, device {device.type}", "",
            "| setting | Ins | Del | Overall ± se | paired Δ vs defaults ± se | s/image |",
            "| --- | --- | --- | --- | --- | --- |"]
    defaults, result_rows = None, []
    for label, options in [("defaults", {})] + parse_settings(args.grid, args.combo):
        start = time.perf_counter()
        sal = sas_fast.attribute(model, images, labels, preset="paper-cifar", iterations=args.iterations,
                                 progress=None, precision=args.precision, **options)
        seconds = (time.perf_counter() - start) / len(images)
        res = deletion_game(model, images, sal, labels)
        if defaults is None:
            defaults, delta = res, "-"
        else:
            mean, se = res.paired_gap(defaults)
            delta = f"{mean:+.3f} ± {se:.3f}"
            result_rows.append({"setting": f"{SETTING_NAMES[args.dataset]} / {SETTING_NAMES[args.arch]}, "
                                           f"{len(images)} calibration images",
                                "metric": f"{label} − the defaults, Overall, paired", "value": delta})
        rows.append(f"| {label} | {res.ins:.3f} | {res.dele:.3f} | {res.overall:.3f} ± {res.overall_se:.3f} "
                    f"| {delta} | {seconds:.2f} |")
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n")
    if args.rows:
        append_rows("calibration", result_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
