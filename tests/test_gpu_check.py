"""benchmarks/speed/gpu_check.sh rehearsed on the CPU (GPU_CHECK_REHEARSAL=1: the Triton interpreter,
tiny sizes): every step runs and passes, and the archive and summary.md hold each step's rows;
the summary on its own: cold and warm solve rows apart, steps cut or not run named as such."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "pipeline", "attribute_resnet8", "attribute_vgg16", "ops", "nli", "conformance"]
from benchmarks.speed import gpu_check_summary


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    env = dict(os.environ, GPU_CHECK_REHEARSAL="1", PYTHON=sys.executable)
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "speed" / "gpu_check.sh"), str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    return run, out


def test_rehearsal_passes_every_step_and_leaves_two_files(rehearsal):
    run, out = rehearsal
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "summary.md"]
    with tarfile.open(out / "gpu_check.tar.gz") as archive:
        steps = archive.extractfile("./steps.tsv").read().decode().splitlines()[1:]
    assert [line.split("\t")[:2] for line in steps] == [[name, "0"] for name in STEPS]


def test_rehearsal_archive_holds_each_steps_results(rehearsal):
    _, out = rehearsal
    with tarfile.open(out / "gpu_check.tar.gz") as archive:
        names = set(archive.getnames())
        read = lambda name: archive.extractfile(f"./{name}").read().decode()  # noqa: E731
        assert {f"./{s}.log" for s in STEPS} <= names
        (pipeline,) = json.loads(read("pipeline.json"))
        assert pipeline["backend"] == "triton" and pipeline["eager_ms"] > 0
        for model in ("resnet8", "vgg16"):
            (row,) = json.loads(read(f"attribute_{model}.json"))["rows"]
            assert row["model"] == model and row["cnn"] > 0 and row["fused_backend"] == "triton"
        ops = [json.loads(line) for line in read("ops_rows.jsonl").splitlines()]
        assert {r["op"] for r in ops} == {"step_pipeline", "mask_pipeline", "solve_thresholds", "threshold_masks",
                                          "masked_images", "smooth_softmax_pool", "pyramid_mask", "blur_pyramid"}
        assert ops[0]["op"] == "step_pipeline" and all(r["median_ms"] > 0 for r in ops)
        assert "torch.profiler" in read("pipeline.log") and "| 32 | 9 |" in read("nli.log")
        assert "2 passed" in read("conformance.log") and "SKIPPED" in read("conformance.log")


def test_rehearsal_summary_shows_each_steps_rows(rehearsal):
    _, out = rehearsal
    summary = (out / "summary.md").read_text()
    for name in STEPS:
        assert f"| {name} | passed |" in summary
    assert "| 16 | 2 | 6 | triton |" in summary                         # the captured-pipeline row
    assert "| resnet8 | 32 | 1 | fp32 |" in summary and "| vgg16 | 32 | 1 | fp32 |" in summary
    assert "| solve_thresholds | cold | B1-32px |" in summary and "| solve_thresholds | warm | B1-32px |" in summary
    assert "| 32 | 9 |" in summary and "pytest: 2 passed" in summary and "needs a CUDA device" in summary


def _row(op, start, backend, ms):
    params = {"case": "B1-224px", "backend": backend} | ({"start": start} if start else {})
    return json.dumps({"op": op, "params": params, "median_ms": ms})


def test_summary_keeps_cold_and_warm_apart_and_names_cut_steps(tmp_path):
    (tmp_path / "steps.tsv").write_text("step\texit code\tseconds\tcap s\nops\t124\t90\t90\nnli\tnot run\t0\t25\n")
    (tmp_path / "ops_rows.jsonl").write_text("\n".join([
        _row("solve_thresholds", "cold", "reference", 4.0), _row("solve_thresholds", "cold", "triton", 0.5),
        _row("solve_thresholds", "warm", "reference", 2.0), _row("solve_thresholds", "warm", "triton", 0.25)]))
    (tmp_path / "conformance.log").write_text("tests/a.py::test_x[cuda] PASSED\ntests/a.py::test_y[cuda] FAILED\n")
    summary = gpu_check_summary.summary(tmp_path)
    assert "| ops | cut at its cap | 90 | 90 |" in summary and "| nli | not run | 0 | 25 |" in summary
    assert "| solve_thresholds | cold | B1-224px | 4.000 | 0.500 | 8.0 |" in summary
    assert "| solve_thresholds | warm | B1-224px | 2.000 | 0.250 | 8.0 |" in summary
    assert "pytest did not finish; finished so far: 1 passed, 1 failed, 0 skipped" in summary
    assert "## NLI solver\n\nno results (FileNotFoundError" in summary


def test_asked_steps_run_alone_and_the_rest_are_named(tmp_path):
    env = dict(os.environ, GPU_CHECK_REHEARSAL="1", PYTHON=sys.executable, GPU_CHECK_STEPS="env nli")
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "speed" / "gpu_check.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "| env | passed |" in summary and "| nli | passed |" in summary
    assert all(f"| {name} | not asked |" in summary for name in STEPS if name not in ("env", "nli"))
