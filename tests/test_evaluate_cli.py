"""The paper's evaluation at dataset scale: `attribute-dataset --method` for the baselines and
`evaluate` scoring finished runs with the deletion game, exactly as one scores a single image,
resumable, sharded under torchrun, with the paired table as text, CSV and JSON."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.paths import shared_dir
from sas_fast.cli import main
from sas_fast.dataset import DatasetRunError, attribute_dataset, merge
from sas_fast.dataset.model_spec import model_input, resolve_model
from sas_fast.dataset.scoring import evaluate_runs
from sas_fast.evaluate import deletion_game

from test_dataset_run import MODEL, SETTINGS, _env, data  # noqa: F401 (fixture)

BASELINE = dict(batch_size=4, chunk_size=4, progress=False)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    attribute_dataset(data / "images.npz", MODEL, root / "sas", **SETTINGS)
    attribute_dataset(data / "images.npz", MODEL, root / "gradcam", method="grad-cam", **BASELINE)
    return root


def _study_overall(data, out):
    """Overall per image as a study script scores one image: its stored map, the fp32 model,
    the noise keyed by the dataset index."""
    maps, images = np.load(merge(out)), np.load(data / "images.npz")["images"]
    model, preprocess = resolve_model(MODEL)
    return {int(i): deletion_game(model, model_input(preprocess, images[i])[None],
                                  torch.from_numpy(s)[None].float(), int(t), image_ids=[int(i)]).overall
            for i, s, t in zip(maps["indices"], maps["saliency"], maps["targets"])}


def test_evaluate_scores_exactly_as_one_image_is_scored_and_pairs_the_folders(data, runs, tmp_path, capsys):
    dirs = [str(runs / "sas"), str(runs / "gradcam")]
    assert main(["evaluate", *dirs, "--csv", str(tmp_path / "t.csv"), "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "| folder | method | N | Ins | Del | Overall ± se | paired Δ vs" in out and "| grad-cam | 16 |" in out
    for name in ("sas", "gradcam"):
        game = np.load(runs / name / "game.npz")
        assert game["insertion"].shape == game["deletion"].shape == (16, 11)
        assert dict(zip(game["indices"].tolist(), game["overall"].tolist())) == _study_overall(data, runs / name)
    rows = json.loads((tmp_path / "t.json").read_text())
    sas, gradcam = (np.load(runs / n / "game.npz")["overall"] for n in ("sas", "gradcam"))
    assert rows[0]["method"] == "sas" and rows[1]["method"] == "grad-cam" and "paired_delta" not in rows[0]
    assert rows[1]["paired_delta"] == pytest.approx((gradcam - sas).mean())
    assert rows[1]["paired_se"] == pytest.approx((gradcam - sas).std(ddof=1) / 4)
    with open(tmp_path / "t.csv") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["sas", "grad-cam"]
    assert main(["gallery", str(runs / "gradcam"), "--out", str(tmp_path / "page")]) == 0   # shows the game
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.count("data-overall=") == 16 and 'data-overall="nan"' not in page and "<svg" in page


def test_evaluate_resumes_and_shards(data, runs, tmp_path):
    evaluate_runs([runs / "sas"], progress=False)                 # scores it, or finds it scored
    with np.load(runs / "sas" / "game.npz") as game:
        whole = {k: game[k] for k in game.files}
    kept = (runs / "sas" / "game_000000.npz").stat().st_mtime_ns
    (runs / "sas" / "game_000002.npz").unlink()
    (runs / "sas" / "game.npz").unlink()
    evaluate_runs([runs / "sas"], progress=False)
    assert (runs / "sas" / "game_000000.npz").stat().st_mtime_ns == kept          # not redone
    again = np.load(runs / "sas" / "game.npz")
    assert all(np.array_equal(again[k], v) for k, v in whole.items())
    two = tmp_path / "two"
    subprocess.run(["cp", "-r", str(runs / "sas"), str(two)], check=True)
    for part in two.glob("game*.npz"):
        part.unlink()
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "sas_fast.cli", "evaluate",
                    str(two)], check=True, env=_env(threads=1), capture_output=True)
    sharded = np.load(two / "game.npz")
    assert all(np.array_equal(sharded[k], v) for k, v in whole.items())


def test_evaluate_and_method_errors_are_one_line(data, runs, tmp_path, capsys):
    attribute_dataset(data / "images.npz", MODEL, tmp_path / "part", max_chunks=1, **SETTINGS)
    attribute_dataset(data / "folder", MODEL, tmp_path / "other", method="gradient", **BASELINE)
    cases = [(["evaluate", str(tmp_path / "part")], "is not complete: rerun its attribute-dataset command"),
             (["evaluate", str(runs / "sas"), str(tmp_path / "other")], "hold runs of different sources"),
             (["evaluate", str(tmp_path)], "not an attribute-dataset output folder"),
             (["attribute-dataset", "--images", str(data / "images.npz"), "--model", MODEL, "--out",
               str(tmp_path / "x"), "--method", "gradient", "--iterations", "5"],
              "method gradient takes no SaS setting (iterations)")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(DatasetRunError, match="unknown method 'lime'"):
        attribute_dataset(data / "images.npz", MODEL, tmp_path / "y", method="lime")


PHOTOS = shared_dir() / "data" / "imagenet_samples"


@pytest.mark.skipif(not (PHOTOS / "labels.csv").exists(), reason="needs the ImageNet photos of ../shared")
def test_the_command_line_reproduces_the_imagenet_study(tmp_path):
    """Two ImageNet photos, EfficientNet-Lite0, the gradient's maps: the rows of
    benchmarks/studies/imagenet_study.py and `attribute-dataset` + `evaluate` give the same Overall."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from test_reproduce import _script

    lines = (PHOTOS / "labels.csv").read_text().splitlines()
    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    for line in lines[1:3]:
        name = line.split(",")[0]
        (folder / "images" / name).write_bytes((PHOTOS / "images" / name).read_bytes())
    (folder / "labels.csv").write_text("\n".join(lines[:3]) + "\n")
    study = _script("imagenet_study")
    assert study.main(["--images", str(folder), "--n", "2", "--methods", "gradient", "--out",
                       str(tmp_path / "rows"), "--maps", str(tmp_path / "maps")]) == 0
    rows = {r["index"]: r["overall"] for r in map(json.loads, (tmp_path / "rows" / "evaluation_gradient.jsonl")
                                                    .read_text().splitlines())}
    attribute_dataset(folder, "efficientnet-lite0", tmp_path / "run", method="gradient", batch_size=1,
                      chunk_size=1, progress=False)
    (row,) = evaluate_runs([tmp_path / "run"], progress=False)
    game = np.load(tmp_path / "run" / "game.npz")
    assert dict(zip(game["indices"].tolist(), game["overall"].tolist())) == rows
    assert row["overall"] == pytest.approx(np.mean(list(rows.values())))
