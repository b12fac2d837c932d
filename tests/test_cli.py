"""The CLI: the demo and a user's photo each give an overlay PNG of the photo's own size."""
import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch", reason="CLI tests need the 'demo' extra")
import matplotlib.image  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from sas_fast import baselines  # noqa: E402
from sas_fast.cli import _inputs, build_parser, main  # noqa: E402
from sas_fast.precision import resolve_precision  # noqa: E402


def test_demo_writes_overlay_of_the_photo_size(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["explain", "--demo", "--iterations", "1", "--out", str(out)]) == 0
    png = matplotlib.image.imread(out)
    assert png.shape[:2] == skimage.data.chelsea().shape[:2]
    printed = capsys.readouterr().out
    assert "1 iterations" in printed and f"model precision {resolve_precision('auto', 'cpu').precision}" in printed


def test_demo_schedule_and_preset_are_honoured():
    from sas_fast.cli import DEMO_ITERATIONS, DEMO_PRESET, _schedule
    from sas_fast.config import PRESETS

    parse = build_parser().parse_args
    assert _schedule(parse(["explain", "--demo"])) == (DEMO_PRESET, DEMO_ITERATIONS)
    assert DEMO_ITERATIONS < PRESETS[DEMO_PRESET].iterations
    assert _schedule(parse(["explain", "x.png"])) == ("default", 112)
    assert _schedule(parse(["explain", "x.png", "--preset", "fast"])) == ("fast", 300)
    assert _schedule(parse(["compare", "--demo", "--preset", "paper-imagenet"])) == ("paper-imagenet", 800)
    assert _schedule(parse(["explain", "--demo", "--preset", "fast", "--iterations", "7"])) == ("fast", 7)


def test_demo_has_a_time_budget_and_others_only_when_asked():
    from sas_fast.cli import DEMO_MAX_SECONDS, _max_seconds

    parse = build_parser().parse_args
    assert _max_seconds(parse(["explain", "--demo"])) == DEMO_MAX_SECONDS == 120
    assert _max_seconds(parse(["compare", "--demo"])) == DEMO_MAX_SECONDS
    assert _max_seconds(parse(["explain", "--demo", "--iterations", "80"])) is None
    assert _max_seconds(parse(["explain", "--demo", "--preset", "fast"])) is None
    assert _max_seconds(parse(["explain", "x.png"])) is None
    assert _max_seconds(parse(["explain", "x.png", "--max-seconds", "30"])) == 30


def test_explain_stops_at_the_time_budget_and_says_so(tmp_path, capsys):
    """Any budget lets the first iteration run; this one is over by then."""
    assert main(["explain", "--demo", "--iterations", "3", "--max-seconds", "0.01",
                 "--out", str(tmp_path / "d.png")]) == 0
    printed = capsys.readouterr().out
    assert "time budget: stopped after 1 of 3 iterations (36 model passes per image" in printed
    assert "s per iteration)" in printed and (tmp_path / "d.png").exists()


def test_precision_defaults_to_auto_and_is_resolved_per_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    args = build_parser().parse_args(["explain", "--demo"])
    assert args.precision == "auto"
    assert _inputs(args)[-1] == ("fp32", "the CPU has neither AVX512-BF16 nor AMX-BF16 (bf16 would be emulated)")


def test_explain_user_photo_with_target_and_layer(tmp_path):
    photo = (np.random.default_rng(0).random((61, 90, 3)) * 255).astype(np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(photo).save(path)
    assert main(["explain", str(path), "--iterations", "1", "--target", "3",
                 "--layer", "_blocks.2", "--out", str(tmp_path / "o")]) == 0
    assert matplotlib.image.imread(tmp_path / "o" / "noise_sas.png").shape[:2] == (61, 90)


def _one_line_error(capsys, message: str) -> None:
    """The command printed exactly one line ``sas-fast: ...message...`` to stderr, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith("sas-fast: ") and err.count("\n") == 1 and message in err, err


def test_explain_rejects_missing_file_and_unknown_layer(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "missing.png"), "--iterations", "1"]) == 2
    _one_line_error(capsys, "cannot read image")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "z.png")
    assert main(["explain", str(tmp_path / "z.png"), "--layer", "nope", "--iterations", "1"]) == 2
    _one_line_error(capsys, "model has no layer 'nope'")


@pytest.mark.parametrize("command, message", [
    (["explain", "--demo", "--iterations", "0"], "--iterations must be >= 1, got 0"),
    (["compare", "--demo", "--iterations", "-3"], "--iterations must be >= 1, got -3"),
    (["explain", "--demo", "--max-seconds", "0"], "--max-seconds must be a number of seconds > 0, got 0.0"),
    (["compare", "--demo", "--max-seconds", "nan"], "--max-seconds must be a number of seconds > 0, got nan"),
    (["explain"], "explain: give IMAGE paths or --demo"),
    (["explain", "--demo", "--out", "{tmp}/missing/x.png"], "cannot write output"),
    (["explain", "--demo", "--out", "/proc/x.png"], "cannot write output /proc/x.png"),
    (["explain", "--demo", "--out", "{tmp}/file/sub"], "cannot create output folder"),
    (["compare", "--demo", "--out", "{tmp}/missing/grid.png"], "cannot write output"),
])
def test_bad_arguments_fail_before_any_work_in_one_line(command, message, tmp_path, capsys, monkeypatch):
    """Checked before the model is loaded (``_model`` would fail the test) and before any output."""
    (tmp_path / "file").write_text("")
    monkeypatch.setattr("sas_fast.cli._model", lambda name: pytest.fail("the model was loaded"))
    assert main([c.format(tmp=tmp_path) for c in command]) == 2
    _one_line_error(capsys, message)


def test_compare_writes_a_grid_with_every_method(tmp_path, capsys):
    photo = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    out = tmp_path / "grid.png"
    assert main(["compare", str(tmp_path / "p.png"), "--iterations", "1", "--ep-iterations", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    methods = ["SaS", "GradCAM", "IG", "Guided BP"] + (["EP"] if baselines.HAS_TORCHRAY else [])
    assert all(f"{m}: " in printed for m in methods)
    assert matplotlib.image.imread(out).shape[0] > 100
