"""Dataset-scale attribution (sas_fast.dataset): sharding, resumption, integrity, bad input.

A tiny conv net (``tests/tiny_model.py``) on 16 x 16 images, 3 iterations, window 3, 4 masks,
the reference ops backend (independent of the compiled extensions).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.paths import shared_dir
from sas_fast.dataset import DatasetRunError, attribute_dataset, merge, resolve_model
from sas_fast.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED = shared_dir()
MODEL = "tiny_model:make"
SETTINGS = dict(batch_size=4, chunk_size=4, iterations=3, window=3, num_masks=6, backend="reference",
                progress=False)
CLI_SETTINGS = ["--model", MODEL, "--batch-size", "4", "--iterations", "3", "--option", "window=3",
                "--option", "num_masks=6", "--option", "backend=reference"]


def _env(threads=None):
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _arrays(path) -> dict:
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 16))
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / "sub" / "grey.png")
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image file, ignored")
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted one-process run on the npz: (output folder, merged arrays)."""
    out = tmp_path_factory.mktemp("reference")
    attribute_dataset(data / "images.npz", MODEL, out, **SETTINGS)
    return out, _arrays(merge(out))


def test_chunk_contents(reference):
    out, merged = reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["chunks"]) == 4 and manifest["skipped"] == []
    assert manifest["config"]["targets"] == "labels"
    np.testing.assert_array_equal(merged["indices"], np.arange(16))
    assert merged["saliency"].shape == (16, 16, 16) and merged["saliency"].dtype == np.float16
    assert merged["saliency"].min() >= 0 and merged["saliency"].max() <= 1
    np.testing.assert_array_equal(merged["targets"], merged["labels"])
    assert np.all((merged["clean_scores"] > 0) & (merged["clean_scores"] < 1))
    assert merged["scores_insertion"].shape == merged["scores_deletion"].shape == (16, 6)
    np.testing.assert_allclose(merged["areas"], np.linspace(0, 1, 6))
    run = manifest["throughput"]
    assert run["images"] == 16 and run["images_per_s"] > 0 and run["cpu_s_per_image"] > 0


def test_two_processes_give_the_maps_of_one(data, tmp_path):
    """torchrun with 2 gloo processes and a plain single process write identical maps."""
    common = ["attribute-dataset", "--images", str(data / "images.npz"), *CLI_SETTINGS, "--chunk-size", "4"]
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "sas_fast.cli", *common,
                    "--out", str(tmp_path / "two")], check=True, env=_env(threads=1), cwd=REPO)
    subprocess.run([sys.executable, "-m", "sas_fast.cli", *common, "--out", str(tmp_path / "one")],
                   check=True, env=_env(threads=1), cwd=REPO)
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["throughput"]["world_size"] == 2 and two["complete"]
    ranks = {json.loads((tmp_path / "two" / f"chunk_{c:06d}.json").read_text())["rank"] for c in range(4)}
    assert ranks == {0, 1}
    _assert_same(_arrays(merge(tmp_path / "two")), _arrays(merge(tmp_path / "one")))


def test_stopped_run_resumes_to_the_uninterrupted_result(data, reference, tmp_path):
    attribute_dataset(data / "images.npz", MODEL, tmp_path, max_chunks=1, **SETTINGS)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["chunks"]) == 1
    with pytest.raises(DatasetRunError, match="3 of 4 chunks missing"):
        merge(tmp_path)
    run = attribute_dataset(data / "images.npz", MODEL, tmp_path, **SETTINGS)
    assert run["images"] == 12
    _assert_same(_arrays(merge(tmp_path)), reference[1])


def _worker_pid(launcher_pid: int, local_rank: int):
    """The pid of torchrun's worker with this LOCAL_RANK (Linux /proc), or None if not started."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killed_rank_resumes_without_loss_or_duplicates(data, tmp_path):
    """SIGKILL rank 1 of a 2-process torchrun once its first chunk is written; rerunning with
    one process completes the run, equal to an uninterrupted one. 60 iterations per image, so
    the kill lands long before rank 1's last chunk."""
    cli = list(CLI_SETTINGS)
    cli[cli.index("--iterations") + 1] = "60"
    common = ["-m", "sas_fast.cli", "attribute-dataset", "--images", str(data / "images.npz"),
              *cli, "--chunk-size", "4", "--out"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = subprocess.Popen([str(torchrun), "--standalone", "--nproc-per-node", "2", *common, str(killed)],
                                env=_env(threads=1), cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "chunk_000001.json").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, "rank 1 wrote no chunk"
            time.sleep(0.02)
        os.kill(_worker_pid(launcher.pid, 1), signal.SIGKILL)
        assert launcher.wait(timeout=60) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    done_before = len(list(killed.glob("chunk_*.json")))
    assert 1 <= done_before < 4
    for out in (killed, whole):
        subprocess.run([sys.executable, *common, str(out)], check=True, env=_env(threads=1), cwd=REPO,
                       stdout=subprocess.DEVNULL)
    resumed = json.loads((killed / "manifest.json").read_text())["throughput"]
    assert resumed["images"] == 16 - 4 * done_before
    assert not list(killed.glob(".*.tmp-*"))
    _assert_same(_arrays(merge(killed)), _arrays(merge(whole)))


def test_truncated_and_corrupted_chunks_are_redone(data, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / "saliency.npz").unlink()
    chunk0 = (out / "chunk_000000.npz").read_bytes()
    (out / "chunk_000000.npz").write_bytes(chunk0[: len(chunk0) // 2])
    chunk1 = bytearray((out / "chunk_000001.npz").read_bytes())
    chunk1[len(chunk1) // 2] ^= 0xFF
    (out / "chunk_000001.npz").write_bytes(bytes(chunk1))
    (out / "chunk_000002.json").unlink()
    (out / ".chunk_000003.npz.tmp-sas-fast-999").write_bytes(b"left by a killed run")
    with pytest.raises(DatasetRunError, match="3 of 4 chunks missing or corrupt"):
        merge(out)
    run = attribute_dataset(data / "images.npz", MODEL, out, **SETTINGS)
    assert run["images"] == 12
    assert not (out / ".chunk_000003.npz.tmp-sas-fast-999").exists()
    _assert_same(_arrays(merge(out)), reference[1])


def test_bf16_precision(data, tmp_path):
    images = _arrays(data / "images.npz")
    np.savez(tmp_path / "four.npz", images=images["images"][:4], labels=images["labels"][:4])
    attribute_dataset(tmp_path / "four.npz", MODEL, tmp_path / "out", precision="bf16", **SETTINGS)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["precision"] == "bf16"
    saliency = _arrays(merge(tmp_path / "out"))["saliency"]
    assert saliency.shape == (4, 16, 16) and np.isfinite(saliency).all()


def test_rerun_with_another_configuration_is_refused(data, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    with pytest.raises(DatasetRunError, match="another configuration.*seed"):
        attribute_dataset(data / "images.npz", MODEL, out, **dict(SETTINGS, seed=1))


def test_folder_with_unreadable_image(data, tmp_path):
    with pytest.warns(UserWarning, match="skipping unreadable image bad.png"):
        attribute_dataset(data / "folder", MODEL, tmp_path, **SETTINGS)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["targets"] == "predicted" and manifest["complete"]
    assert [s["name"] for s in manifest["skipped"]] == ["bad.png"]
    merged = _arrays(merge(tmp_path))
    assert merged["names"].tolist() == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png",
                                        "sub/grey.png"]
    np.testing.assert_array_equal(merged["indices"], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(merged["skipped"], [0])
    assert "labels" not in merged and merged["saliency"].shape == (6, 16, 16)


def test_bad_input_gives_clear_errors(data, tmp_path):
    bad_labels = tmp_path / "bad_labels.npz"
    np.savez(bad_labels, images=np.zeros((4, 16, 16, 3), np.uint8), labels=np.zeros(3, np.int64))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (dict(images_src=tmp_path / "missing"), "does not exist"),
        (dict(images_src=bad_labels), "3 labels for 4 images"),
        (dict(out_dir=blocker / "out"), "cannot write to output folder"),
        (dict(images_src=data / "folder", targets="labels"), "has no labels"),
        (dict(model_spec="no_such_module:make"), "cannot import model module"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(window=4), "window must be a positive odd integer"),
    ]
    for change, message in cases:
        args = dict(images_src=data / "images.npz", model_spec=MODEL, out_dir=tmp_path / "out", **SETTINGS)
        args.update(change)
        with pytest.raises(DatasetRunError, match=message):
            attribute_dataset(args.pop("images_src"), args.pop("model_spec"), args.pop("out_dir"), **args)


def test_cli_reports_errors_and_merges(reference, tmp_path, capsys):
    assert main(["attribute-dataset", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 *CLI_SETTINGS]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["merge", str(tmp_path)]) == 2
    assert "not an attribute-dataset output folder" in capsys.readouterr().err
    assert main(["merge", str(reference[0]), "--dest", str(tmp_path / "all.npz")]) == 0
    _assert_same(_arrays(tmp_path / "all.npz"), reference[1])


def _one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("sas-fast: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("extra, message", [
    (["--option", "window=5.0"], "window must be a positive odd integer or None, got 5.0"),
    (["--option", "iterations=3"], "--option iterations=3: use --iterations instead"),
    (["--option", "preset='fast'"], "--option preset='fast': use --preset instead"),
    (["--option", "trace_iterations=(0,)"], "set by the dataset run itself"),
    (["--iterations", "0"], "iterations must be a positive integer, got 0"),
    (["--model", "tiny_model:make_tuple_output"], "the model must return a tensor of B x classes logits"),
])
def test_cli_errors_are_one_line(data, tmp_path, capsys, extra, message):
    assert main(["attribute-dataset", "--images", str(data / "images.npz"), "--out", str(tmp_path / "o"),
                 *CLI_SETTINGS, *extra]) == 2
    _one_line_error(capsys, message)


def test_a_preset_keeps_its_iterations_unless_given(monkeypatch):
    """``--preset fast`` runs the preset's 300 iterations (not a default of the command's own),
    ``--iterations`` still overrides them, and the run gets every other setting of the preset."""
    from sas_fast.cli import build_parser
    from sas_fast.config import PRESETS
    from sas_fast.dataset import cli as dataset_cli
    from sas_fast.dataset.run import _check_arguments

    assert _check_arguments(4, None, None, "auto", 4, None, {"preset": "fast"}) == PRESETS["fast"]
    assert _check_arguments(4, 7, None, "auto", 4, None, {"preset": "fast"}).iterations == 7
    assert _check_arguments(4, None, None, "auto", 4, None, {}).iterations == PRESETS["default"].iterations
    calls = []
    monkeypatch.setattr(dataset_cli, "attribute_dataset", lambda *a, **kw: calls.append(kw))
    args = build_parser().parse_args(["attribute-dataset", "--images", "x.npz", "--model", MODEL,
                                      "--out", "o", "--preset", "fast"])
    assert dataset_cli.run_attribute_dataset(args) == 0
    assert calls[0]["preset"] == "fast" and calls[0]["iterations"] is None


def test_merge_to_an_unwritable_destination_is_one_line(reference, tmp_path, capsys):
    assert main(["merge", str(reference[0]), "--dest", str(tmp_path / "nodir" / "x.npz")]) == 2
    _one_line_error(capsys, f"cannot write merged npz {tmp_path / 'nodir' / 'x.npz'}: No such file")
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("bad_spec", ["tiny_model:no_such_function", "tiny_model:make_tuple_output"])
def test_a_run_stopped_by_a_bad_model_does_not_lock_its_folder(data, reference, tmp_path, bad_spec):
    """The corrected rerun on the same folder is accepted and gives the uninterrupted result."""
    with pytest.raises(ValueError):
        attribute_dataset(data / "images.npz", bad_spec, tmp_path, **SETTINGS)
    attribute_dataset(data / "images.npz", MODEL, tmp_path, **SETTINGS)
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["model"] == MODEL
    _assert_same(_arrays(merge(tmp_path)), reference[1])


def test_model_specs(data):
    model, preprocess = resolve_model(str(TESTS / "tiny_model.py") + ":make")
    assert preprocess(np.zeros((16, 16, 3), np.uint8)).shape == (3, 16, 16) and not model.training
    for spec, message in [("resnet8:imagenet:/x", "unknown dataset"), ("nonsense", "unknown model spec"),
                          ("tiny_model:no_such_function", "has no function"),
                          ("missing_file.py:make", "does not exist")]:
        with pytest.raises(DatasetRunError, match=message):
            resolve_model(spec)


@pytest.mark.skipif(not (SHARED / "models" / "resnet8_cifar10.pt").exists(), reason="no shared models")
@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_paper_model_spec_matches_the_dataset_loader(dataset):
    from sas_fast.models.data import load_npz_dataset

    _, preprocess = resolve_model(f"resnet8:{dataset}:{SHARED / 'models'}")
    with np.load(SHARED / "data" / dataset / "test.npz") as archive:
        images = archive["images"][:4]
    expected, _ = load_npz_dataset(dataset, SHARED / "data", range(4))
    assert torch.equal(torch.stack([preprocess(image) for image in images]), expected)
