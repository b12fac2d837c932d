"""Smoke runs of the paper-reproduction scripts (tiny N, few iterations) on the real models."""
import importlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import benchmarks.rows
from benchmarks.paths import shared_dir
from sas_fast.precision import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_dir()
pytestmark = pytest.mark.skipif(not (SHARED / "models" / "resnet8_cifar10.pt").exists(),
                                reason=f"the paper's models are not at {SHARED}")


def _script(name):
    return importlib.import_module(f"benchmarks.studies.{name}")


def test_reproduce_table2_smoke(tmp_path, monkeypatch):
    main = _script("reproduce_table2").main
    assert main(["--dataset", "mnist", "--arch", "resnet8", "--n", "4", "--iterations", "2",
                 "--batch", "4", "--shared", str(SHARED), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table2_mnist_resnet8.md").read_text()
    for method in ("SaS", "Gradient", "Guided BP", "IG", "GradCAM"):
        assert f"| {method} |" in table
    data = json.loads((tmp_path / "table2_mnist_resnet8.json").read_text())
    assert all(i % 10 != 1 for i in data["indices"])              # never a calibration image
    assert len(data["results"]["SaS"]["insertion"]) == 4
    for png in ("curves_mnist_resnet8.png", "profiles_mnist_resnet8.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert "| Overall − SaS (paired) |" in table and "| SaS |" in table
    (tmp_path / "table2_mnist_resnet8.md").unlink()
    assert main(["--dataset", "mnist", "--arch", "resnet8", "--out", str(tmp_path), "--render-only"]) == 0
    assert (tmp_path / "table2_mnist_resnet8.md").read_text() == table

    common = ["--dataset", "mnist", "--arch", "resnet8", "--iterations", "1", "--batch", "4",
              "--shared", str(SHARED), "--out", str(tmp_path)]
    assert "window 5" in data["header"]
    monkeypatch.setattr(benchmarks.rows, "RESULTS", tmp_path / "rows")
    assert main(common + ["--n", "4", "--methods", "SaS", "--sas", "window=3", "--update", "--rows"]) == 0  # rest kept
    written = [json.loads(line) for line in (tmp_path / "rows" / "table2.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in written] == [f"Overall, {m}" for m in data["results"]]
    assert written[0]["setting"] == "MNIST / ResNet8, N = 4" and written[0]["value"].endswith("(0.463)")
    updated = json.loads((tmp_path / "table2_mnist_resnet8.json").read_text())
    assert list(updated["results"]) == list(data["results"])
    assert "1 iterations" in updated["header"] and "window 3" in updated["header"]
    assert updated["results"]["IG"] == data["results"]["IG"]
    assert updated["results"]["SaS"] != data["results"]["SaS"]
    with pytest.raises(SystemExit, match="other images"):
        main(common + ["--n", "3", "--methods", "SaS", "--update"])
    with pytest.raises(SystemExit, match="unknown --methods"):
        main(common + ["--n", "4", "--methods", "SaS,LIME"])


def test_calibration_smoke(tmp_path, monkeypatch):
    main = _script("calibrate_sas").main
    out = tmp_path / "cal.md"
    monkeypatch.setattr(benchmarks.rows, "RESULTS", tmp_path / "rows")
    assert main(["--dataset", "cifar10", "--n", "2", "--iterations", "2", "--grid", "lr=0.1",
                 "--combo", "window=5,max_blur=2.0", "--shared", str(SHARED), "--out", str(out), "--rows"]) == 0
    written = [json.loads(line) for line in (tmp_path / "rows" / "calibration.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in written] == ["lr = 0.1 − the defaults, Overall, paired",
                                              "window = 5, max_blur = 2.0 − the defaults, Overall, paired"]
    rows = out.read_text().splitlines()
    assert rows[-3].startswith("| defaults |") and rows[-2].startswith("| lr = 0.1 |")
    assert rows[-1].startswith("| window = 5, max_blur = 2.0 |")
    assert rows[-3].split(" | ")[4] == "-" and " ± " in rows[-1].split(" | ")[4]     # paired Δ


def test_rounding_sensitivity_smoke(capsys):
    main = _script("rounding_sensitivity").main
    assert main(["--checkpoints", "1", "2", "--shared", str(SHARED)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fp")]
    diffs = {line.split(" | ")[0][2:]: [float(v) for v in line.strip("| ").split(" | ")[1:]] for line in rows}
    assert len(diffs) == 3
    assert max(diffs["fp64 reference vs cpp"]) < 1e-12          # same function, float64: rounding only
    assert 0 < max(diffs["fp32 reference vs cpp"]) < 1e-4


def test_gpu_table2_script_stages_and_runs_on_cpu(tmp_path):
    env = {**os.environ, "SAS_SHARED": str(SHARED), "ASSETS": str(tmp_path / "assets"), "DEVICE": "cpu",
           "N": "2", "ITERATIONS": "1", "BATCH": "2", "PYTHON": sys.executable}
    script = str(ROOT / "benchmarks" / "studies" / "gpu_table2.sh")
    subprocess.run(["bash", script, "--stage", "resnet8", "mnist"], env=env, check=True)
    assert sorted(p.name for p in (tmp_path / "assets").rglob("*.*")) == ["resnet8_mnist.pt", "test.npz"]
    subprocess.run(["bash", script, str(tmp_path / "out")], env=env, check=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table2.md", "table2.tar.gz"]
    with tarfile.open(tmp_path / "out" / "table2.tar.gz") as archive:     # SaS's step, then the baselines'
        names = set(archive.getnames())
        data = json.loads(archive.extractfile("./table2_mnist_resnet8.json").read())
    assert {"./profiles_mnist_resnet8.png", "./resnet8_mnist_sas.log", "./resnet8_mnist_baselines.log"} <= names
    assert sorted(data["results"]) == sorted(["SaS", "Gradient", "Guided BP", "IG", "GradCAM"])
    assert len(data["indices"]) == 2 and "bf16" in data["header"]
    assert "| SaS |" in (tmp_path / "out" / "table2.md").read_text()


def test_fast_sas_study_smoke(tmp_path, monkeypatch):
    """Two methods at 36 passes on 2 evaluation images, then the frontier from the saved run."""
    study = _script("fast_sas_study")
    args = ["--dataset", "mnist", "--arch", "resnet8", "--split", "evaluation", "--n", "2",
            "--shared", str(SHARED), "--out", str(tmp_path)]
    monkeypatch.setattr(benchmarks.rows, "RESULTS", tmp_path / "rows")
    assert study.main(args + ["--methods", "cut@36,sample3-cosine@36", "--reference", "cut@36", "--rows"]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "rows" / "presets.jsonl").read_text().splitlines()]
    assert row["metric"] == "sample3-cosine@36 (36 passes) − cut@36, Overall, paired" and "(" in row["value"]
    data = json.loads((tmp_path / "fast_evaluation_mnist_resnet8.json").read_text())
    assert all(i % 10 != 1 for i in data["indices"])              # never a calibration image
    assert {k: r["passes"] for k, r in data["results"].items()} == {"cut@36": 36, "sample3-cosine@36": 36}
    table = (tmp_path / "fast_evaluation_mnist_resnet8.md").read_text()
    assert re.search(r"\| sample3-cosine@36 \| 36 \| [0-9.-]+ ± [0-9.]+ \| [-+][0-9.]+ ± [0-9.]+ \([0-2]/2\)", table), table
    # a rerun that runs nothing new (only its tables and rows) keeps the header of the runs made
    data["header"] = "### the runs' header"
    (tmp_path / "fast_evaluation_mnist_resnet8.json").write_text(json.dumps(data))
    assert study.main(args + ["--methods", "sample3-cosine@36", "--reference", "cut@36"]) == 0
    assert json.loads((tmp_path / "fast_evaluation_mnist_resnet8.json").read_text())["header"] == "### the runs' header"
    # rows of runs made in another precision than the studies' bf16 say so in their setting
    data["precision"] = "fp32"
    (tmp_path / "fast_evaluation_mnist_resnet8.json").write_text(json.dumps(data))
    assert study.main(args + ["--methods", "sample3-cosine@36", "--reference", "cut@36", "--rows"]) == 0
    settings = [json.loads(line)["setting"] for line in (tmp_path / "rows" / "presets.jsonl").read_text().splitlines()]
    assert settings == ["MNIST / ResNet8, N = 2", "MNIST / ResNet8, N = 2, SaS fp32"]
    assert study.main(["--out", str(tmp_path), "--frontier", "sample3-cosine",
                       "--figure", str(tmp_path / "frontier.png")]) == 0
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="unknown method"):
        study.main(args + ["--methods", "K7@100"])


def test_imagenet_fast_check_smoke(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    from sas_fast import config

    monkeypatch.setitem(config.PRESETS, "paper-imagenet", config.SaSConfig(iterations=2))
    monkeypatch.setitem(config.PRESETS, "fast-imagenet", config.SaSConfig(iterations=2, area_samples=3))
    out = tmp_path / "imagenet.json"
    # the pipeline under test, not bf16's numerics: bf16 only where the CPU runs it natively
    native = ["--precision", resolve_precision("auto", "cpu").precision]
    assert _script("imagenet_fast_check").main(["--cut", "1", "--out", str(out)] + native) == 0
    rows = json.loads(out.read_text())["chelsea"]
    assert rows["paper-imagenet (800 it.)"]["spearman_vs_800"] == pytest.approx(1.0)
    assert rows["fast-imagenet"]["passes"] == 2 * 6 and -1 <= rows["fast-imagenet"]["spearman_vs_800"] <= 1
    # when fast-imagenet is the cut itself, the snapshot is scored and no second run is made
    monkeypatch.setitem(config.PRESETS, "fast-imagenet", config.SaSConfig(iterations=1))
    out.unlink()
    assert _script("imagenet_fast_check").main(["--cut", "1", "--out", str(out)] + native) == 0
    rows = json.loads(out.read_text())["chelsea"]
    assert rows["fast-imagenet"] == rows["paper-imagenet cut at 1 it."]
    assert rows["fast-imagenet"]["spearman_vs_fast_imagenet"] == pytest.approx(1.0)
    # a method added later reuses the stored rows: fast runs alone, and is compared with the maps
    # computed in its own process only
    monkeypatch.setitem(config.PRESETS, "fast", config.SaSConfig(iterations=2, area_samples=3))
    assert _script("imagenet_fast_check").main(["--cut", "1", "--out", str(out), "--methods",
                                                "paper-imagenet,fast-imagenet,fast"] + native) == 0
    again = json.loads(out.read_text())["chelsea"]
    assert again["fast"]["passes"] == 2 * 6 and "spearman_vs_800" not in again["fast"]
    assert {k: again[k] for k in rows} == rows
    with pytest.raises(SystemExit, match="unknown method"):
        _script("imagenet_fast_check").main(["--methods", "fast,slow", "--out", str(out)])
