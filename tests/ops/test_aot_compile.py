"""Ahead-of-time compilation of every Triton kernel through its launch wrapper, without a GPU
(``benchmarks/speed/kernel_resources.py``): each kernel variant the ops launch compiles for the CUDA
targets, with no register spills and shared memory within the target's limit. Default suite:
sm_90 and sm_75 in float32; ``--runslow``: sm_75, sm_80, sm_86, sm_89, sm_90 in float32,
bfloat16 and float64 (the record of that run: ``benchmarks/results/kernel_resources.json``)."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("window", "smooth_softmax_pool", "threshold_masks", "pyramid", "masked_images")

nvidia = pytest.importorskip("triton.backends.nvidia", reason="triton's CUDA backend is not installed")


def _defined_kernels():
    """``{(module, kernel name)}`` of every ``@triton.jit`` kernel of the Triton ops."""
    return {(name, key) for name in MODULES
            for key in vars(importlib.import_module("sas_fast.ops.triton." + name)) if key.endswith("_kernel")}


def _compile(tmp_path, targets, dtypes):
    out = tmp_path / "kernel_resources.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed.kernel_resources",
                           "--targets", targets, "--dtypes", dtypes, "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _check(report, targets, dtypes):
    assert report["failures"] == [], json.dumps(report["failures"][:5], indent=1)
    kernels = _defined_kernels()
    for target in targets:
        for dtype in dtypes:
            records = [r for r in report["kernels"] if r["target"] == target and r["dtype"] == dtype]
            assert {(r["module"], r["kernel"]) for r in records} == kernels, (target, dtype)
            for r in records:
                assert 0 < r["registers"] <= 255 and r["local_bytes"] == 0
                assert r["shared_bytes"] + r["static_shared_bytes"] <= r["shared_limit"]


def test_every_kernel_compiles_for_sm90_and_sm75(tmp_path):
    report = _compile(tmp_path, "90,75", "float32")
    _check(report, ["sm_90", "sm_75"], ["float32"])


@pytest.mark.slow
def test_every_kernel_compiles_for_every_target_and_dtype(tmp_path):
    """bfloat16 compiles for sm_75 too (no bf16 arithmetic there: the kernels load bf16 and
    compute in float32)."""
    report = _compile(tmp_path, "75,80,86,89,90", "float32,bfloat16,float64")
    _check(report, [f"sm_{cc}" for cc in (75, 80, 86, 89, 90)], ["float32", "bfloat16", "float64"])
