"""benchmarks/studies/gpu_imagenet.sh rehearsed on the CPU (DEVICE=cpu, --quick): both lanes write rows
for every photo of the split, and OUT_DIR ends with the archive and the table."""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks.paths import shared_dir

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = shared_dir() / "data" / "imagenet_samples"


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="needs the ImageNet photos of ../shared")
def test_rehearsal_writes_rows_of_both_lanes(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("torchray")
    assets = tmp_path / "assets"
    env = dict(os.environ, PYTHON=sys.executable, ASSETS=str(assets), SAS_SHARED=str(PHOTOS.parents[1]),
               DEVICE="cpu", ROUNDS="2", BATCH="2", EP_SHARDS="2", STUDY_ARGS="--quick",
               SAS_METHODS="fastest", BASELINES="gradient", IMAGENET_BUDGET="240")
    script = str(ROOT / "benchmarks" / "studies" / "gpu_imagenet.sh")
    subprocess.run(["bash", script, "--stage"], env=env, check=True, capture_output=True, timeout=60)
    run = subprocess.run(["bash", script, str(tmp_path / "out")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["imagenet.md", "imagenet.tar.gz"]
    table = (tmp_path / "out" / "imagenet.md").read_text()
    assert "N = 2" in table and all(f"| {m} |" in table for m in ("fastest", "gradient", "extremal_perturbation"))
    with tarfile.open(tmp_path / "out" / "imagenet.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"./rows/evaluation_fastest.jsonl", "./ep0.log", "./ep1.log"} <= names or \
        {"rows/evaluation_fastest.jsonl", "ep0.log", "ep1.log"} <= names
