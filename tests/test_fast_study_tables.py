"""The tables of benchmarks/studies/fast_sas_study.py computed from stored runs (no model needed)."""
import json

import numpy as np
import pytest

import benchmarks.rows
from benchmarks.studies import fast_sas_study as study


def test_fast_sas_study_pools_paired_differences_over_settings(tmp_path, monkeypatch):
    """``--pooled``: per-image differences against the reference, concatenated over the settings
    that ran it (a setting without the reference is left out), best method first."""
    def write(name, results):
        (tmp_path / f"fast_calibration_{name}.json").write_text(json.dumps(
            {"indices": [0, 1, 2], "header": "", "results": {k: {"passes": 448, "overall": v} for k, v in results.items()}}))

    write("mnist_resnet8", {"ref": [0.5, 0.5, 0.5], "a": [0.6, 0.5, 0.4], "b": [0.5, 0.4, 0.3]})
    write("cifar10_vgg16", {"ref": [0.2, 0.3, 0.4], "a": [0.3, 0.4, 0.5], "b": [0.2, 0.3, 0.4]})
    write("cifar10_resnet8", {"a": [0.9, 0.9, 0.9]})                     # no reference: not pooled
    monkeypatch.setattr(benchmarks.rows, "RESULTS", tmp_path / "rows")
    argv = ["--pooled", "--split", "calibration", "--reference", "ref", "--out", str(tmp_path), "--rows"]
    assert study.main(argv) == 0
    table = (tmp_path / "pooled_calibration.md").read_text()
    a = np.array([0.1, 0.0, -0.1, 0.1, 0.1, 0.1])
    b = np.array([0.0, -0.1, -0.2, 0.0, 0.0, 0.0])
    lines = [line for line in table.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert lines[0] == f"| a | 2 | 6 | {a.mean():+.4f} ± {a.std(ddof=1) / np.sqrt(6):.4f} (4/6) |"
    assert lines[1] == f"| b | 2 | 6 | {b.mean():+.4f} ± {b.std(ddof=1) / np.sqrt(6):.4f} (0/6) |"
    assert table.startswith("pooled over cifar10_vgg16, mnist_resnet8 (calibration images)")
    rows = [json.loads(r) for r in (tmp_path / "rows" / "presets.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in rows] == ["a − ref, Overall, paired", "b − ref, Overall, paired"]
    assert {r["setting"] for r in rows} == {"2 settings pooled, calibration images, N = 6"}
    # runs made in fp32 (the precision a CPU without native bf16 gets) say so in the rows' setting
    for name in ("mnist_resnet8", "cifar10_vgg16"):
        path = tmp_path / f"fast_calibration_{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "precision": "fp32"}))
    assert study.main(argv) == 0
    rows = [json.loads(r) for r in (tmp_path / "rows" / "presets.jsonl").read_text().splitlines()][2:]
    assert {r["setting"] for r in rows} == {"2 settings pooled, calibration images, N = 6, SaS fp32"}


def test_paired_differences_read_mean_se_and_wins():
    from benchmarks.common import paired

    d = np.array([1.0, 0.0, 2.0])
    assert paired([1, 2, 3], [0, 2, 1]) == f"+1.000 ± {d.std(ddof=1) / np.sqrt(3):.3f} (2/3)"
    assert paired([0.5], [0.75], digits=2) == "-0.25 ± nan (0/1)"


def test_the_study_names_of_the_presets_are_their_configs():
    from benchmarks.studies.fast_sas_study import PRESET_NAMES, method_options
    from sas_fast.config import make_config

    for study_name, preset in PRESET_NAMES.items():
        assert make_config(**method_options(study_name)) == make_config(preset), study_name


def test_a_two_seed_mean_is_the_per_image_mean_of_both_seeds(tmp_path, monkeypatch):
    """``FAMILY@P (seeds 0 and 1)`` exists where both seeds ran on the same images, pools like a method
    and can be the reference; it is read from the stored runs, never run."""
    def write(name, results):
        (tmp_path / f"fast_evaluation_{name}.json").write_text(json.dumps(
            {"indices": [0, 1], "header": "", "results": {k: {"passes": 448, "overall": v} for k, v in results.items()}}))

    write("mnist_resnet8", {"sample2-const-avg0.5@450": [0.4, 0.6], "sample2-const-avg0.5-seed1@450": [0.6, 0.2],
                            "sample1-const-avg0.5@450": [0.7, 0.5], "sample1-const-avg0.5-seed1@450": [0.5, 0.5],
                            "sample2-const-avg0.75@450": [0.1, 0.1], "sample2-const-avg0.75-seed1@450": [0.1]})
    results = study.seed_means(json.loads((tmp_path / "fast_evaluation_mnist_resnet8.json").read_text())["results"])
    np.testing.assert_allclose(results["sample2-const-avg0.5@450 (seeds 0 and 1)"]["overall"], [0.5, 0.4])
    np.testing.assert_allclose(results["sample1-const-avg0.5@450 (seeds 0 and 1)"]["overall"], [0.6, 0.5])
    assert "sample2-const-avg0.75@450 (seeds 0 and 1)" not in results        # not the same images
    assert not any(name.startswith("sample2-const-avg0.5-seed1@450 (") for name in results)
    monkeypatch.setattr(benchmarks.rows, "RESULTS", tmp_path / "rows")
    argv = ["--pooled", "--split", "evaluation", "--reference", "sample2-const-avg0.5@450 (seeds 0 and 1)",
            "--out", str(tmp_path)]
    assert study.main(argv) == 0
    table = (tmp_path / "pooled_evaluation.md").read_text()
    assert "| sample1-const-avg0.5@450 (seeds 0 and 1) | 1 | 2 | +0.1000 ± 0.0000 (2/2) |" in table
    assert study.method_options("sample1-const-avg0.5-seed1@450")["seed"] == 1


def test_fresh_calibration_images_avoid_the_used_ones_and_stay_stratified():
    from benchmarks.studies.calibrate_sas import calibration_indices

    labels = (np.arange(400) // 10) % 4          # every class among the indices i % 10 == 1
    used = calibration_indices(labels, 8)
    fresh = calibration_indices(labels, 8, exclude=used)
    assert len(fresh) == 8 and not set(fresh) & set(used)
    assert all(i % 10 == 1 for i in fresh) and np.bincount(labels[fresh], minlength=4).tolist() == [2, 2, 2, 2]
    assert calibration_indices(labels, 8, exclude=[]).tolist() == used.tolist()


def test_fresh_needs_a_calibration_run_to_avoid(tmp_path):
    with pytest.raises(SystemExit, match="--fresh: no calibration run"):
        study.main(["--split", "calibration", "--fresh", str(tmp_path), "--out", str(tmp_path / "new"),
                    "--methods", "sample2-const-avg0.5@450"])
    done = tmp_path / "done"                      # one folder with the setting's run, one without
    done.mkdir()
    (done / "fast_calibration_cifar10_resnet8.json").write_text('{"indices": [1, 11]}')
    with pytest.raises(SystemExit, match=f"no calibration run {tmp_path / 'empty'}"):
        study.main(["--split", "calibration", "--fresh", str(done), str(tmp_path / "empty"),
                    "--out", str(tmp_path / "new"), "--methods", "sample2-const-avg0.5@450"])
    with pytest.raises(SystemExit, match="needs --split calibration"):
        study.main(["--split", "evaluation", "--fresh", str(tmp_path), "--out", str(tmp_path / "new"),
                    "--methods", "sample2-const-avg0.5@450"])
