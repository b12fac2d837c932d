"""Smoke test of benchmarks/studies/imagenet_study.py on four generated photos with a tiny model: batched
photos, shards sharing one rows file, resume, and the report."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sas_fast import config

from test_reproduce import _script
from tiny_model import make


def _photo_folder(root, count=4):
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = ["file,class_index,wnid,name"]
    for i in range(count):
        name = f"{i:04d}_n0000000{i}_thing.jpg"
        Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(root / name)
        lines.append(f"{name},{i % 3},n0000000{i},thing")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_imagenet_study_batches_shards_resumes_and_reports(tmp_path, monkeypatch, capsys):
    study = _script("imagenet_study")
    model = make()[0]
    monkeypatch.setattr(study, "efficientnet_lite", lambda variant: model)
    monkeypatch.setitem(config.PRESETS, "fast", config.SaSConfig(iterations=2, area_samples=3))
    photos = _photo_folder(tmp_path / "photos")
    out, maps = tmp_path / "rows", tmp_path / "maps"
    args = ["--images", str(photos), "--n", "3", "--out", str(out), "--maps", str(maps),
            "--precision", "fp32", "--reference", "gradient"]
    for shard in ("0/2", "1/2"):              # two processes' halves of the split, one rows file
        assert study.main(args + ["--methods", "fast,gradient", "--batch", "2", "--shard", shard]) == 0
    fast, gradient = _rows(out / "evaluation_fast.jsonl"), _rows(out / "evaluation_gradient.jsonl")
    indices = study.split_indices(4, "evaluation", 3).tolist()
    assert sorted(r["index"] for r in fast) == sorted(indices) == sorted(r["index"] for r in gradient)
    assert {r["passes"] for r in fast} == {2 * 6} and {r["passes"] for r in gradient} == {1}
    assert all(r["device"] == "cpu" and 0 <= r["overall"] <= 1 and len(r["insertion"]) == 11 for r in fast)
    assert all(np.load(maps / "fast" / f"{i:04d}.npy").dtype == np.float16 for i in indices)
    # the same photo scores the same alone as in a batch of the batched baseline
    one = tmp_path / "one"
    assert study.main(args[:4] + ["--out", str(one), "--maps", str(maps), "--methods", "gradient"]) == 0
    alone = {r["index"]: r["overall"] for r in _rows(one / "evaluation_gradient.jsonl")}
    assert alone == pytest.approx({r["index"]: r["overall"] for r in gradient}, abs=1e-6)
    # resume: a finished split does no work; the report pairs the methods on the shared photos
    capsys.readouterr()
    assert study.main(args + ["--methods", "fast,gradient"]) == 0
    assert len(_rows(out / "evaluation_fast.jsonl")) == 3
    table = capsys.readouterr().out
    assert "N = 3" in table and "| fast | 12 |" in table and "(" in table.split("| fast |")[1]
    # figure 4 and the compare grid from the rows; a map that is not kept is computed again; rows
    # under a name that is no preset or baseline (an earlier setting's, renamed) stay out of them
    (maps / "gradient" / f"{indices[0]:04d}.npy").unlink()
    (out / "evaluation_sample2-cosine.jsonl").write_text((out / "evaluation_fast.jsonl").read_text())
    assert study.main(args + ["--figures", str(tmp_path / "figures"), "--grid", "2"]) == 0
    assert all((tmp_path / "figures" / f"imagenet_{name.replace('.', '_lite0.')}").stat().st_size > 10_000
               for name in ("curves.png", "compare_grid.jpg"))
    assert (maps / "gradient" / f"{indices[0]:04d}.npy").exists()
    assert not (maps / "sample2-cosine").exists()
    (out / "evaluation_sample2-cosine.jsonl").unlink()
    # the table as result rows (benchmarks/rows.py), the reference's row without a difference
    import benchmarks.rows
    monkeypatch.setattr(benchmarks.rows, "RESULTS", tmp_path / "result_rows")
    assert study.main(args + ["--report", "--rows"]) == 0
    written = _rows(tmp_path / "result_rows" / "imagenet.jsonl")
    assert [r["metric"] for r in written] == ["Overall, fast", "Overall, gradient"] or \
        [r["metric"] for r in written] == ["Overall, gradient", "Overall, fast"]
    assert all(r["setting"] == "EfficientNet-Lite0, N = 3" and r["commit"] for r in written)
    assert "Δ vs gradient" in next(r for r in written if r["metric"] == "Overall, fast")["value"]
    # a method run on fewer photos (a run under way) shrinks the full table, not a report without it
    (out / "evaluation_partial.jsonl").write_text((out / "evaluation_fast.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    assert study.main(args + ["--report"]) == 0
    assert "N = 1" in capsys.readouterr().out
    assert study.main(args + ["--report", "--methods", "fast"]) == 0      # the reference comes along
    table = capsys.readouterr().out
    assert "N = 3" in table and "| gradient |" in table and "partial" not in table
    assert study.main(args[:-2] + ["--report", "--methods", "fast"]) == 0   # no rows of fast-imagenet
    assert "| fast |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no rows of \\['nothing'\\]"):
        study.main(args + ["--report", "--methods", "fast,nothing"])
    for bad in (["--batch", "0"], ["--shard", "2/2"], ["--shard", "x"]):
        with pytest.raises(SystemExit):
            study.main(args + bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_imagenet_study_on_cuda(tmp_path, monkeypatch):
    study = _script("imagenet_study")
    model = make()[0]
    monkeypatch.setattr(study, "efficientnet_lite", lambda variant: model)
    monkeypatch.setitem(config.PRESETS, "fast", config.SaSConfig(iterations=2, area_samples=3))
    photos = _photo_folder(tmp_path / "photos")
    assert study.main(["--images", str(photos), "--n", "2", "--out", str(tmp_path / "rows"), "--maps",
                       str(tmp_path / "maps"), "--methods", "fast", "--device", "cuda", "--batch", "2"]) == 0
    assert all(r["device"] != "cpu" for r in _rows(tmp_path / "rows" / "evaluation_fast.jsonl"))
