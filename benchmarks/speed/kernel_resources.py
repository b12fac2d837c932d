"""Ahead-of-time compilation of every Triton kernel as its launch wrapper launches it, for CUDA
targets, without a GPU: registers, local memory (spills) and shared memory per kernel.

The ops of ``sas_fast.ops.triton`` run forward and backward on CPU tensors (224 px, B = 2, K = 20,
C = 3, L = 8) inside :func:`~sas_fast.ops.triton.launch.cuda_block_sizes` (the block sizes of a
CUDA launch) with ``JITFunction.run`` replaced by a recorder: each launch's arguments give the
kernel's signature as the JIT would build it (pointer and integer types, ``tl.float64`` scalars,
constexpr values), unspecialised (no divisibility hints: the conservative variant). Each distinct
(kernel, signature, constexprs) is compiled with ``triton.compile`` for every target; registers
and local memory come from ``cuobjdump --dump-resource-usage`` on the cubin (local memory in a
Triton kernel is register spill), shared memory from the compiled metadata, checked against the
target's per-block limit (opt-in maximum).

    python -m benchmarks.speed.kernel_resources --out benchmarks/results/kernel_resources.json
    python -m benchmarks.speed.kernel_resources --targets 90,75 --dtypes float32

prints (and with ``--out`` writes) one JSON object: ``kernels`` (one record per kernel, dtype and
target) and ``failures`` (compile errors, spills, shared memory over the limit).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"           # compiled kernels: JITFunction, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction, mangle_type  # noqa: E402

from benchmarks.rows import append as append_rows
from sas_fast.ops import reference as R  # noqa: E402
from sas_fast.ops import triton as T  # noqa: E402
from sas_fast.ops.triton.launch import cuda_block_sizes  # noqa: E402

TARGETS = (75, 80, 86, 89, 90)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
#: dynamic shared memory per block (opt-in maximum), bytes, by compute capability
SHARED_LIMIT = {75: 65536, 80: 166912, 86: 101376, 89: 101376, 90: 232448}
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def run_ops(dtype: torch.dtype) -> None:
    """Every Triton op, forward and backward, at realistic sizes (the launches are recorded, not
    run: outputs are uninitialised)."""
    g = torch.Generator().manual_seed(0)
    size, window, b, k = 224, 41, 2, 20
    r = window // 2
    premask = torch.randn(b, 1, size + 2 * r, size + 2 * r, generator=g).to(dtype)
    premask.requires_grad_(True)
    schedule = T.smooth_softmax_pool(premask, window, 1.0)
    schedule.sum().backward()
    areas = torch.linspace(0, 1, k + 2, dtype=dtype)[1:-1]
    leaf = torch.rand(b, 1, size, size, generator=g).to(dtype).requires_grad_(True)
    thresholds = R.solve_thresholds(leaf.detach().double(), areas.double(), 20.0).to(dtype)
    T.solve_thresholds(leaf.detach(), areas, 20.0, thresholds)     # (the cold start's quantile
    masks, _ = T.threshold_masks(leaf, areas, 20.0, thresholds)    # needs float32 / float64)
    masks.sum().backward()
    T.threshold_masks(leaf, areas, 20.0, thresholds, implicit_grad=False)[0].sum().backward()
    pyramid = T.blur_pyramid(torch.rand(b, 3, size, size, generator=g).to(dtype), 8, 20.0)
    T.pyramid_mask(pyramid, masks.detach().requires_grad_(True)).sum().backward()
    for modes in (("insertion", "deletion"), ("deletion",)):
        T.masked_images(leaf, thresholds, pyramid, 20.0, modes).sum().backward()


def recorded_launches(dtype: torch.dtype) -> dict:
    """``{(kernel name, signature, constexprs): (kernel, signature, constexprs)}`` of every launch
    :func:`run_ops` makes, signatures typed as the JIT types them."""
    launches, run = {}, JITFunction.run

    def record(self, *args, grid, warmup, num_warps=4, **kwargs):
        bound = inspect.signature(self.fn).bind(*args, **kwargs).arguments
        signature, constexprs = {}, {}
        for i, p in enumerate(self.params):
            value = bound[p.name]
            if p.is_constexpr:
                signature[p.name], constexprs[(i,)] = "constexpr", value
            else:
                signature[p.name] = p.annotation_type or mangle_type(value)
        key = (self.fn.__name__, tuple(signature.items()), tuple(sorted(
            (i, str(v)) for (i,), v in constexprs.items())), num_warps)
        launches.setdefault(key, (self, signature, constexprs, num_warps))

    JITFunction.run = record
    try:
        with cuda_block_sizes():
            run_ops(dtype)
    finally:
        JITFunction.run = run
    return launches


def resources(cubin: bytes) -> dict:
    """``{"registers", "local_bytes"}`` of the one function in ``cubin`` (cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    return {"registers": int(usage[1]), "local_bytes": int(usage[4]),
            "static_shared_bytes": int(usage[3])}


def check(kernel, signature: dict, constexprs: dict, num_warps: int, cc: int) -> tuple:
    """``(resources or None, problems)`` of ``kernel`` compiled for ``sm_<cc>``: a compile error,
    spills, or shared memory over the target's limit."""
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", cc, 32),
                                  options={"num_warps": num_warps})
    except Exception as exc:  # noqa: BLE001 - every compile error is a finding
        return None, [f"{type(exc).__name__}: {str(exc)[:500]}"]
    usage = {**resources(compiled.asm["cubin"]), "shared_bytes": compiled.metadata.shared,
             "shared_limit": SHARED_LIMIT[cc], "num_warps": compiled.metadata.num_warps}
    problems = []
    if usage["local_bytes"] > 0:
        problems.append(f"spills: {usage['local_bytes']} bytes of local memory")
    shared = usage["shared_bytes"] + usage["static_shared_bytes"]
    if shared > SHARED_LIMIT[cc]:
        problems.append(f"shared memory {shared} B over the limit {SHARED_LIMIT[cc]} B")
    return usage, problems


def compile_all(targets, dtypes) -> dict:
    """The JSON report: one record per (kernel variant, dtype, target), and the failures."""
    records, failures = [], []
    for dtype_name in dtypes:
        launches = recorded_launches(DTYPES[dtype_name])
        for (name, _, consts, _), (kernel, signature, constexprs, num_warps) in sorted(launches.items(), key=str):
            for cc in targets:
                where = {"kernel": name, "module": kernel.fn.__module__.rsplit(".", 1)[-1],
                         "dtype": dtype_name, "target": f"sm_{cc}",
                         "constexprs": {kernel.params[i].name: value for i, value in consts}}
                usage, problems = check(kernel, signature, constexprs, num_warps, cc)
                if usage is not None:
                    records.append({**where, **usage})
                failures += [{**where, "error": problem} for problem in problems]
    return {"triton": triton.__version__, "torch": torch.__version__,
            "targets": [f"sm_{cc}" for cc in targets], "dtypes": list(dtypes),
            "kernels": records, "failures": failures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)),
                        help="compute capabilities, comma-separated (default: %(default)s)")
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help=f"input dtypes, comma-separated, of {', '.join(DTYPES)} (default: all)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--rows", action="store_true", help="also append a summary to the results rows "
                        "(benchmarks/rows.py)")
    args = parser.parse_args(argv)
    targets = [int(cc) for cc in args.targets.split(",")]
    dtypes = args.dtypes.split(",")
    bad = [cc for cc in targets if cc not in SHARED_LIMIT] + [d for d in dtypes if d not in DTYPES]
    if bad:
        parser.error(f"--targets must be among {sorted(SHARED_LIMIT)} and --dtypes among "
                     f"{list(DTYPES)}; got {bad}")
    report = compile_all(targets, dtypes)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    if args.rows:
        append_rows("cuda", [result_row(report)])
    print(text)
    return 0


def result_row(report: dict) -> dict:
    """The compile report as a row of ``benchmarks/results/rows/cuda.jsonl`` (``benchmarks/rows.py``)."""
    kernels = report["kernels"]
    targets = "/".join(t.removeprefix("sm_") for t in report["targets"])
    return {"setting": f"every Triton kernel through its launch wrapper, sm_{targets} x {'/'.join(report['dtypes'])}",
            "metric": "ahead-of-time compiles",
            "value": f"{len(kernels)} compiles, {len(report['failures'])} failures, "
                     f"{sum(k['local_bytes'] for k in kernels)} bytes of spills, at most "
                     f"{max(k['registers'] for k in kernels)} registers and "
                     f"{max(k['shared_bytes'] + k['static_shared_bytes'] for k in kernels):,} B shared memory"}


if __name__ == "__main__":
    sys.exit(main())
