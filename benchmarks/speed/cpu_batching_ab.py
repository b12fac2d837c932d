"""CPU micro-batches, the former rule against the measured one: paired A/B on the paper's ResNet8.

The former rule (``old``) sent about 4 MiB of masked images per model call whatever the model
(341 images at 32 px); the current one (``new``, ``max_batch=None``) sizes micro-batches by the
model's measured activation memory (:func:`sas_fast.cpu_memory.default_max_batch`). Each run is
a fresh process, one thread: ``attribute`` on ``--images`` CIFAR-10 test images for
``--iterations`` iterations, timed with ``getrusage`` around the call (wall, user, system time,
minor page faults). ``--pairs`` pairs run old, new, old, new, ... ; prints one row per run, then
the speed-up per pair in wall and in CPU time (user + system; the one to read on a shared
machine) and their medians. ``--precision`` is the model's (``auto``: bf16 where native):

    python -m benchmarks.speed.cpu_batching_ab --precision fp32
    python -m benchmarks.speed.cpu_batching_ab --variant old ...     # one run of one rule
    python -m benchmarks.speed.cpu_batching_ab --max-batch 96 ...    # one run with this max_batch
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.paths import shared_dir
from benchmarks.rows import append as append_rows

#: masked-image bytes per model call under the former rule
OLD_CHUNK_BYTES = 4 << 20


def run_once(args) -> dict:
    """One timed ``attribute`` call in this process; the row as a dict."""
    import torch

    from sas_fast import attribute
    from sas_fast.models.cifar import load_paper_model
    from sas_fast.models.data import load_npz_dataset
    from sas_fast.precision import cpu_capability, resolve_precision

    torch.set_num_threads(1)
    model = load_paper_model("resnet8", "cifar10", args.shared / "models")
    images, labels = load_npz_dataset("cifar10", args.shared / "data", indices=list(range(args.images)))
    max_batch = args.max_batch
    if args.variant == "old" and max_batch is None:
        max_batch = max(1, OLD_CHUNK_BYTES // (images[0].numel() * images.element_size()))
    calls = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    attribute(model, images, labels, preset="paper-cifar", iterations=args.iterations, max_batch=max_batch,
              precision=args.precision, progress=False)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"variant": args.variant if args.max_batch is None else f"max_batch={args.max_batch}",
            "max_batch": Counter(calls).most_common(1)[0][0], "wall_s": wall,
            "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt,
            "cpu_capability": cpu_capability(),
            "precision": resolve_precision(args.precision, images.device, images.dtype).precision}


def _child(args, variant: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.speed.cpu_batching_ab", "--variant", variant, "--shared", str(args.shared),
           "--images", str(args.images), "--iterations", str(args.iterations), "--precision", args.precision,
           "--one"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def _row(r: dict) -> str:
    cpu = r["user_s"] + r["sys_s"]
    return (f"| {r['variant']} | {r['max_batch']} | {r['wall_s']:.2f} | {r['user_s']:.2f} | {r['sys_s']:.2f} | "
            f"{100 * r['sys_s'] / cpu:.1f} % | {r['minor_faults']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=("old", "new", "both"), default="both")
    ap.add_argument("--max-batch", type=int, default=None, help="one run with this max_batch instead")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the model's (SaSConfig)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--shared", type=Path, default=None, help="folder with data/ and models/ (benchmarks/paths.py)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # a child: print the row as JSON
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--rows", action="store_true", help="also append the medians to the results rows "
                    "(benchmarks/rows.py)")
    args = ap.parse_args(argv)
    args.shared = shared_dir(args.shared)
    if args.one:
        print(json.dumps(run_once(args)))
        return 0
    variants = ["old", "new"] * args.pairs if args.variant == "both" and args.max_batch is None else [args.variant]
    print(f"ResNet8, CIFAR-10, {args.images} images of 32 px, {args.iterations} iterations, one thread, "
          f"precision {args.precision}")
    print("| rule | images per call | wall s | user s | sys s | sys / CPU | minor faults |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for variant in variants:
        rows.append(run_once(args) if args.max_batch is not None else _child(args, variant))
        print(_row(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if len(rows) >= 2 and args.variant == "both":
        old, new = rows[0::2], rows[1::2]
        for label, seconds in (("wall", lambda r: r["wall_s"]),
                               ("CPU (user + sys)", lambda r: r["user_s"] + r["sys_s"])):
            speed = [seconds(o) / seconds(n) for o, n in zip(old, new)]
            print(f"speed-up old / new, {label} time, per pair: " + ", ".join(f"{s:.2f}x" for s in speed)
                  + f" (median {statistics.median(speed):.2f}x)")
        print(f"CPU capability {rows[0]['cpu_capability']}, model precision {rows[0]['precision']} "
              f"({args.precision})")
        if args.rows:
            append_rows("speed", [result_row(args, old, new)])
    return 0


def result_row(args, old: list, new: list) -> dict:
    """The A/B as a row of ``benchmarks/results/rows/speed.jsonl`` (``benchmarks/rows.py``): medians."""
    median = lambda runs, f: statistics.median(f(r) for r in runs)  # noqa: E731
    wall_old, wall_new = median(old, lambda r: r["wall_s"]), median(new, lambda r: r["wall_s"])
    sys_share = lambda r: 100 * r["sys_s"] / (r["user_s"] + r["sys_s"])  # noqa: E731
    return {"setting": f"ResNet8, {args.images} CIFAR-10 images, {args.iterations} iterations, "
                       f"{new[0]['precision']}, one thread",
            "metric": "micro-batches by measured activations against 4 MiB per call",
            "value": f"{wall_new:.2f} s ({new[0]['max_batch']} images per call) against {wall_old:.2f} s "
                     f"({old[0]['max_batch']}): {wall_old / wall_new:.2f}x; system time "
                     f"{median(new, sys_share):.1f} % against {median(old, sys_share):.1f} % of CPU time"}


if __name__ == "__main__":
    raise SystemExit(main())
