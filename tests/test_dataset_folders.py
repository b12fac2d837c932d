"""A dataset run owns its output folder: one run at a time (an flock taken before anything is
written; a dead run's lock never blocks), only empty folders or this tool's own, and only this
tool's temporary files deleted. Tiny model, 16 x 16 images, the reference backend."""
import json
import subprocess
import sys

import pytest

from sas_fast.cli import main
from sas_fast.dataset import DatasetRunError, attribute_dataset, merge
from sas_fast.dataset.folder import LOCK, owned_folder

from test_dataset_run import CLI_SETTINGS, MODEL, SETTINGS, _env, data  # noqa: F401 (fixture)


def _run(data, out, **extra):
    return attribute_dataset(data / "images.npz", MODEL, out, **{**SETTINGS, **extra})


def test_a_second_run_or_merge_on_a_held_folder_stops_with_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    _run(data, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK}
    with owned_folder(out):                                # another run holds the folder
        with pytest.raises(DatasetRunError, match="in use by another sas-fast run"):
            _run(data, out)
        with pytest.raises(DatasetRunError, match="in use by another sas-fast run"):
            merge(out)
        capsys.readouterr()
        assert main(["attribute-dataset", "--images", str(data / "images.npz"), "--out", str(out),
                     *CLI_SETTINGS]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by another sas-fast run" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name not in (LOCK, "saliency.npz")} == \
        {k: v for k, v in before.items() if k != "saliency.npz"}
    (out / LOCK).write_text("4242\n")                      # a dead run's lock file: no flock held
    assert _run(data, out)["images"] == 0                  # resumes (nothing left to do)
    assert merge(out).exists()


def test_two_runs_started_together_leave_one_configuration(data, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "sas_fast.cli", "attribute-dataset", "--images",
               str(data / "images.npz"), "--out", str(out), *CLI_SETTINGS]
    first = subprocess.Popen(command, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command + ["--seed", "1"], env=_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another sas-fast run" in refused or "another configuration" in refused
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["runs"]) == 1
    assert merge(out).exists()


def test_a_folder_the_tool_did_not_make_is_left_untouched(data, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "manifest.json").write_text('{"project": "mine"}\n')
    with pytest.raises(DatasetRunError, match="was not written by sas-fast attribute-dataset"):
        _run(data, theirs)
    with pytest.raises(DatasetRunError, match="not written by sas-fast"):
        merge(theirs)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    (notes / ".draft.tmp-3").write_text("keep too")
    with pytest.raises(DatasetRunError, match=r"holds files that are not a sas-fast run \(.draft.tmp-3 and 1 more\)"):
        _run(data, notes)
    for folder, names in ((theirs, ["manifest.json"]), (notes, [".draft.tmp-3", "todo.txt"])):
        assert sorted(p.name for p in folder.iterdir()) == names
    assert (theirs / "manifest.json").read_text() == '{"project": "mine"}\n'


def test_only_the_tools_own_temporary_files_are_deleted(data, tmp_path):
    out = tmp_path / "run"
    _run(data, out, max_chunks=1)
    (out / ".user.tmp-77").write_text("the user's")
    (out / ".chunk_000002.npz.tmp-sas-fast-999").write_bytes(b"left by a killed run")
    _run(data, out)
    assert (out / ".user.tmp-77").read_text() == "the user's"
    assert not (out / ".chunk_000002.npz.tmp-sas-fast-999").exists()


def _drop(key):
    def edit(manifest):
        node = manifest
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        del node[last]
    return edit


def _set(key, value):
    def edit(manifest):
        node = manifest
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_drop("runs"), "runs must be list, got None"),
    (_drop("config"), "config must be dict, got None"),
    (_set("config.chunk_size", "4"), "config.chunk_size must be int, got '4'"),
    (_set("config.chunk_size", 0), "config.chunk_size must be >= 1, got 0"),
    (_set("complete", 1), "complete must be bool, got 1"),
    (_set("config.source.count", 8), "config.source.count = 8 with chunk_size 4 makes 2 chunks, but chunk 2"),
    (_set("config.source.count", True), "config.source.count must be int, got True"),
    (_set("chunks", [{"chunk": 9}]), "but chunk 9 is listed or on disk"),
])
def test_an_edited_manifest_is_named_by_every_command(data, tmp_path, capsys, edit, message):
    out = tmp_path / "run"
    _run(data, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    for command in (lambda: merge(out), lambda: _run(data, out)):
        with pytest.raises(DatasetRunError, match=message.replace("(", r"\(").replace("[", r"\[")):
            command()
    capsys.readouterr()
    assert main(["merge", str(out), "--dest", str(tmp_path / "all.npz")]) == 2
    assert main(["gallery", str(out)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(message in line for line in errors), errors
    assert not (tmp_path / "all.npz").exists()
