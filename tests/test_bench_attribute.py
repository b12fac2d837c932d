"""Smoke run of benchmarks/bench_attribute.py on the CPU (the GPU run is benchmarks/gpu_check.sh)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_attribute_quick_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_attribute", ROOT / "benchmarks" / "bench_attribute.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    bench.main(["--quick", "--models", "resnet8", "--device", "cpu", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["images"] == 2 * (4 - 2) * 1
    assert row["cnn"] > 0 and row["reference"] > 0
    assert row["graph"] is None                       # CUDA graphs need a GPU
    assert "fused/cnn" in capsys.readouterr().out
