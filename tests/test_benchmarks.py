"""Smoke runs of the speed benchmarks on the CPU (the GPU run is benchmarks/speed/gpu_check.sh)."""
import argparse
import importlib
import json

import torch

from sas_fast.precision import cpu_capability


def _script(name):
    return importlib.import_module(f"benchmarks.speed.{name}")


def test_bench_attribute_quick_cpu(tmp_path, capsys):
    out = tmp_path / "rows.json"
    _script("bench_attribute").main(["--quick", "--models", "resnet8", "--device", "cpu", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["images"] == 2 * (4 - 2) * 1
    assert row["cnn"] > 0 and row["reference"] > 0
    assert row["graph"] is None                       # CUDA graphs need a GPU
    assert json.loads(out.read_text())["cpu_capability"] == cpu_capability()
    printed = capsys.readouterr().out
    assert "fused/cnn" in printed and f"CPU capability {cpu_capability()}" in printed


def test_bench_nli_solvers_agree():
    row = _script("bench_nli").bench(32, argparse.Namespace(images=1, batch=1), torch.device("cpu"))
    assert row["masks"] == 9 and row["scipy_ms"] > 0 and row["torch_ms"] > 0
    assert row["max_abs"] < 1e-4


def test_pipeline_graph_quick_cpu(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    _script("pipeline_graph").main(["--device", "cpu", "--backend", "cpp", "--quick", "--profile",
                                    "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["size"] == 16 and row["eager_ms"] > 0 and "graph_ms" not in row
    for key in ("solve_iterations_cold", "solve_iterations_warm"):
        assert sum(row[key].values()) == 2 * 4 and "-1" not in row[key]     # every (b, k) converged
    assert 0 < row["launches"]["total"] <= 25
    printed = capsys.readouterr().out
    assert "16 px B=2" in printed and "masked_images" in printed            # the row and the table


def test_cpu_layout_ab_runs_each_layout():
    layouts = []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 3))
    model.register_forward_pre_hook(lambda m, inputs: layouts.append(
        inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()))
    images, maps = torch.rand(1, 3, 8, 8), {}
    for layout in ("nchw", "channels_last"):
        layouts.clear()
        seconds, maps[layout] = _script("cpu_layout_ab").timed_run(model.eval(), images, torch.tensor([2]), 2, layout)
        assert seconds > 0 and any(layouts) == (layout == "channels_last")
    torch.testing.assert_close(maps["nchw"], maps["channels_last"], atol=1e-5, rtol=0)
