"""Hostile use: one model in two threads, models whose output ignores the input, absurd sizes,
options checked before any work, clear errors for odd targets / outputs / seeds, and no
process-wide side effect of a library call."""
import re
import sys
import threading

import numpy as np
import pytest
import torch
from torch import nn

import sas_fast
from sas_fast import attribute, baselines, fits
from sas_fast import config as config_module
from sas_fast.attribute import run_sas
from sas_fast.config import make_config
from sas_fast.evaluate import deletion_game, nli_impute
from sas_fast.precision import resolve_precision


def small_net(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, classes))


def images(b=2, size=16):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(3))


def state(model):
    """Everything of the model a run could change: flags, parameters, BatchNorm statistics."""
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def same_state(a, b):
    return a[0] == b[0] and a[1] == b[1] and all(torch.equal(a[2][k], b[2][k]) for k in a[2])


class Gated(nn.Module):
    """``net``, but a call from a thread other than the main one waits (once) until released."""

    def __init__(self, net):
        super().__init__()
        self.net, self.entered, self.release = net, threading.Event(), threading.Event()

    def forward(self, x):
        if threading.current_thread() is not threading.main_thread() and not self.release.is_set():
            self.entered.set()
            assert self.release.wait(60)
        return self.net(x)


# --- 3. threads --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:the model is in train mode")
def test_second_thread_on_a_model_in_use_is_refused_and_the_model_comes_back():
    model = Gated(small_net()).train()
    model.net[5].bias.requires_grad_(False)
    before = state(model)
    errors, results = [], []

    def first():
        try:
            results.append(attribute(model, images(), 0, iterations=2))
        except BaseException as err:       # noqa: BLE001 - reported by the main thread
            errors.append(err)

    worker = threading.Thread(target=first)
    worker.start()
    assert model.entered.wait(60)
    try:
        with pytest.raises(RuntimeError, match=r"model \(Gated at 0x[0-9a-f]+\) is in use by another thread"):
            attribute(model, images(), 0, iterations=2)
        with pytest.raises(RuntimeError, match="in use by another thread"):
            baselines.gradient(model.net, images(), 0)          # a part of the model in use
    finally:
        model.release.set()
        worker.join(60)
    assert not errors and len(results) == 1
    assert same_state(state(model), before)
    attribute(model.eval(), images(), 0, iterations=1)       # released: the next call runs


def test_nested_use_in_one_thread_is_allowed():
    from sas_fast.checks import guarded_model

    model = small_net().train()
    with guarded_model(model):
        out = attribute(model, images(), 0, iterations=1)
        assert not model.training
    assert model.training and out.shape == (2, 16, 16)


# --- 5. zero gradient, sharpness and beta caps -------------------------------------------------

class Constant(nn.Module):
    """Logits that ignore the input (no autograd path from it at all)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


class Steps(nn.Module):
    """Logits of the input's signs: piecewise constant, so the input gradient is 0 almost everywhere."""

    def __init__(self):
        super().__init__()
        self.net = small_net().eval()

    def forward(self, x):
        return self.net(torch.sign(x))


@pytest.mark.parametrize("case", ["constant model", "hook zeroes the layer", "piecewise-constant model",
                                  "constant model, gradient init"])
def test_a_run_without_any_gradient_is_reported(case):
    net = small_net().eval()
    options = dict(iterations=3, return_trace=True)
    if case.startswith("constant model"):
        net = Constant().eval()
        options["init"] = "gradient" if "init" in case else "noise"
    elif case == "hook zeroes the layer":
        net[0].register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
        options["layer"] = net[1]
    else:
        net = Steps().eval()
    with pytest.warns(RuntimeWarning, match=r"image\(s\) \[0, 1\] got a zero gradient in every one of 3"):
        _, trace = attribute(net, images(size=32), None if "layer" in options else 0, **options)
    assert trace.zero_gradient.tolist() == [True, True]


def test_a_run_with_gradient_records_none():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, trace = attribute(small_net().eval(), images(), 0, iterations=3, return_trace=True)
    assert trace.zero_gradient.tolist() == [False, False]


@pytest.mark.parametrize("name, value", [("beta", 1e300), ("beta", 1.5e8), ("sharpness", 1e6)])
def test_beta_and_sharpness_are_capped(name, value):
    """1e8 and 1e5: the sharpness at which a 32-px run's pre-mask gradient is about 1e-5 of the
    default's (1e6: 1e-10 to 1e-5, every mask binary in float32)."""
    top = {"beta": config_module.BETA_MAX, "sharpness": config_module.SHARPNESS_MAX}[name]
    with pytest.raises(ValueError, match=re.escape(f"{name} must be at most {top:g} (") + ".*got " + re.escape(repr(value))):
        attribute(small_net().eval(), images(), 0, iterations=1, **{name: value})
    attribute(small_net().eval(), images(), 0, iterations=1, **{name: top})


# --- 6. absurd sizes ---------------------------------------------------------------------------

def test_a_huge_iteration_count_under_a_time_budget_allocates_nothing_per_iteration():
    _, trace = attribute(small_net().eval(), images(1), 0, iterations=10 ** 12, max_seconds=1.0,
                         num_masks=3, area_samples=None, mode="insertion", return_trace=True)
    assert 1 <= trace.loss.shape[0] < 10 ** 6 and trace.passes.tolist() == [trace.loss.shape[0]]


@pytest.mark.parametrize("option, message", [
    (dict(num_masks=10 ** 6, area_samples=None), r"num_masks=1000000 needs [0-9.]+ GiB for the masked images of one step"),
    (dict(levels=10 ** 6), r"levels=1000000 needs 11.4 GiB for the blur pyramid .* 8 GiB available"),
    (dict(num_masks=10 ** 6 + 2, area_samples=10 ** 6), "area_samples=1000000 needs"),
])
def test_sizes_that_cannot_fit_are_refused_before_allocating(option, message, monkeypatch):
    """On a machine with 8 GiB available; the allocations that would follow are made to fail."""
    monkeypatch.setattr(fits, "available_bytes", lambda device: 8 << 30)
    monkeypatch.setattr(sas_fast.ops, "blur_pyramid", lambda *a, **k: pytest.fail("allocated the pyramid"))
    with pytest.raises(ValueError, match=message):
        attribute(small_net().eval(), images(1, 32), 0, iterations=1, **option)


def test_a_huge_num_masks_with_a_bad_area_samples_is_refused_at_once():
    """The allowed values are listed from the divisors up to the square root, not a loop to 10**9."""
    with pytest.raises(ValueError, match=r"one of \[1, 2, 4, .*, 250000000, 500000000, 1000000000\] or None, got 3"):
        make_config(num_masks=10 ** 9 + 2, area_samples=3)


def test_a_size_beyond_any_machine_is_refused():
    with pytest.raises(ValueError, match="levels=1000000000 needs .* GiB available: lower levels"):
        attribute(small_net().eval(), images(1, 32), 0, iterations=1, levels=10 ** 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_estimate_counts_the_pyramid_and_masked_images_as_allocated(dtype):
    """The pyramid as allocated; one step's masked images (and their gradient) as allocated, plus
    their B x K' x H x W masks (and gradient)."""
    config = make_config("paper-cifar", levels=5, num_masks=6, mode="both").resolved(16, 16)
    x = images(2).to(dtype)
    need = fits.run_bytes(config, tuple(x.shape), x.element_size())
    pyramid = sas_fast.ops.blur_pyramid(x, 5, config.max_blur)
    assert need["levels"] == pyramid.nbytes
    schedule = torch.rand(2, 1, 16, 16, dtype=dtype)
    masked = sas_fast.ops.masked_images(schedule, torch.full((2, 4), 0.5, dtype=dtype), pyramid, 20.0, "both",
                                        True)
    masks = 2 * 4 * 16 * 16 * x.element_size()
    assert need["num_masks"] == 2 * (masked.nbytes + masks)


# --- 7. options validated before any work ------------------------------------------------------

def test_compare_refuses_bad_ep_iterations_before_any_work(monkeypatch, capsys):
    from sas_fast.cli import main

    monkeypatch.setattr("sas_fast.cli._inputs", lambda args: pytest.fail("work started"))
    assert main(["compare", "--demo", "--ep-iterations", "-1", "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sas-fast: --ep-iterations must be >= 1, got -1"


@pytest.mark.parametrize("call, message", [
    (lambda m, x: baselines.extremal_perturbation(m, x, 0, max_iter=0), "max_iter must be an integer >= 1, got 0"),
    (lambda m, x: baselines.extremal_perturbation(m, x, 0, areas=(0.0,)), r"areas must be numbers in \(0, 1\]"),
    (lambda m, x: baselines.extremal_perturbation(m, x, 0, step=0), "step must be an integer >= 1 or None"),
    (lambda m, x: baselines.integrated_gradients(m, x, 0, n_steps=0), "n_steps must be an integer >= 1, got 0"),
    (lambda m, x: baselines.integrated_gradients(m, x, 0, internal_batch_size=0), "internal_batch_size"),
    (lambda m, x: baselines.integrated_gradients(m, x, 0, baseline=float("nan")), "baseline must be a finite"),
])
def test_baseline_options_are_checked_first(call, message):
    pytest.importorskip("captum")
    with pytest.raises(ValueError, match=message):
        call(small_net().eval(), images())


# --- 9. clear errors instead of library errors -------------------------------------------------

class Output(nn.Module):
    """``small_net``'s logits passed through ``transform``."""

    def __init__(self, transform, classes=3):
        super().__init__()
        self.net, self.transform = small_net(classes).eval(), transform

    def forward(self, x):
        return self.transform(self.net(x))


class IntLayer(nn.Module):
    def forward(self, x):
        return (x * 100).long()


BAD = {
    "str target": (lambda: attribute(small_net().eval(), images(), "3", iterations=1), "got str '3'"),
    "list of str": (lambda: attribute(small_net().eval(), images(), ["0", "1"], iterations=1), "got list"),
    "dict target": (lambda: attribute(small_net().eval(), images(), {"a": 1}, iterations=1), "got dict"),
    "2**64 target": (lambda: attribute(small_net().eval(), images(), 2 ** 64, iterations=1), "out of range"),
    "meta target": (lambda: attribute(small_net().eval(), images(), torch.tensor([0, 1], device="meta"),
                                      iterations=1), "target is on the 'meta' device"),
    "integer logits": (lambda: attribute(Output(lambda z: (z * 10).long()), images(), 0, iterations=1),
                       "real floating-point logits, got dtype torch.int64"),
    "complex logits": (lambda: attribute(Output(lambda z: z.to(torch.complex64)), images(), 0, iterations=1),
                       "real floating-point logits, got dtype torch.complex64"),
    "0 classes": (lambda: attribute(Output(lambda z: z[:, :0]), images(), None, iterations=1), "0 classes"),
    "integer layer output": (lambda: attribute(nn.Sequential(IntLayer(), nn.Flatten()).eval(), images(),
                                               iterations=1, layer="0"), "layer output must be a floating-point"),
    "seed=2**64": (lambda: attribute(small_net().eval(), images(), 0, iterations=1, seed=2 ** 64),
                   r"seed must be an integer in \[0, 2\*\*64 - 1\], got 18446744073709551616"),
    "seed=-1": (lambda: attribute(small_net().eval(), images(), 0, iterations=1, seed=-1), "seed must be"),
    "game seed=-1": (lambda: deletion_game(small_net().eval(), images(), torch.rand(2, 16, 16), seed=-1),
                     r"seed must be an integer in \[0, 2\*\*64 - 1\], got -1"),
    "0 x 0 saliency": (lambda: deletion_game(small_net().eval(), images(), torch.rand(2, 0, 0)),
                       r"saliency must be B x H x W with H, W >= 1, got shape \(2, 0, 0\)"),
    "beta=1e300": (lambda: attribute(small_net().eval(), images(), 0, iterations=1, beta=1e300),
                   "beta must be at most"),
    "game ratios 'abc'": (lambda: deletion_game(small_net().eval(), images(), torch.rand(2, 16, 16), ratios="abc"),
                          "ratios must be a non-empty list of values in \\[0, 1\\], got 'abc'"),
    "nli images list": (lambda: nli_impute([[1.0]], torch.ones(1, 1, 1, dtype=torch.bool)),
                        "images must be a torch.Tensor, got list"),
    "nli noise nan": (lambda: nli_impute(images(), torch.rand(2, 16, 16) > 0.5, noise=float("nan")),
                      "noise must be a finite number >= 0, got nan"),
    "init_scale=1e300": (lambda: attribute(small_net().eval(), images(), 0, iterations=1, init="gradient",
                                           init_scale=1e300), "init_scale=1e\\+300 is too large"),
    "threshold_tol=1": (lambda: attribute(small_net().eval(), images(), 0, iterations=1, threshold_tol=1.0),
                        "threshold_tol must be < 1"),
    # 10. silent oddities
    "float keep mask": (lambda: nli_impute(images(), torch.full((2, 16, 16), 0.5)),
                        "keep must be a bool tensor .*got torch.float32"),
    "bf16 on a float64 model": (lambda: attribute(small_net().double().eval(), images().double(), 0,
                                                  iterations=1, precision="bf16"),
                                "precision='bf16' runs a float32 model .* images are torch.float64"),
    "return_trace='no'": (lambda: attribute(small_net().eval(), images(), 0, iterations=1, return_trace="no"),
                          "return_trace must be True or False, got 'no'"),
    "progress='yes'": (lambda: attribute(small_net().eval(), images(), 0, iterations=1, progress="yes"),
                       "progress must be True, False or None"),
}


@pytest.mark.parametrize("name", BAD)
def test_odd_inputs_get_a_value_error_naming_the_argument(name):
    call, message = BAD[name]
    with pytest.raises(ValueError, match=message):
        call()


def test_the_largest_seed_works_and_differs_from_zero():
    net, x = small_net().eval(), images()
    top = attribute(net, x, 0, iterations=2, seed=2 ** 64 - 1, num_masks=6, area_samples=2)
    assert torch.equal(top, attribute(net, x, 0, iterations=2, seed=2 ** 64 - 1, num_masks=6, area_samples=2))
    assert not torch.equal(top, attribute(net, x, 0, iterations=2, seed=0, num_masks=6, area_samples=2))


def test_calls_under_inference_mode_give_the_same_results():
    pytest.importorskip("captum")
    net = small_net().eval()
    plain_sas = attribute(net, images(), 0, iterations=2)
    plain_gradient = baselines.gradient(net, images(), 0)
    with torch.inference_mode():
        x = images()
        assert torch.equal(attribute(net, x, 0, iterations=2), plain_sas)
        assert torch.equal(baselines.gradient(net, x, 0), plain_gradient)
    with torch.inference_mode():
        frozen = small_net().eval()
    with pytest.raises(ValueError, match="made under torch.inference_mode"):
        attribute(frozen, images(), 0, iterations=1)


def test_numpy_and_tensor_scalar_targets_still_work():
    net, x = small_net().eval(), images()
    expected = attribute(net, x, [2, 1], iterations=1)
    for target in (np.array([2, 1]), [torch.tensor(2), np.int64(1)], torch.tensor([2, 1])):
        assert torch.equal(attribute(net, x, target, iterations=1), expected)


# --- 10. the CLI's several images and one PNG --------------------------------------------------

def test_explain_several_images_into_one_png_is_refused(tmp_path, monkeypatch, capsys):
    from sas_fast.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sas_fast.cli._model", lambda name: pytest.fail("the model was loaded"))
    assert main(["explain", "a.png", "b.png", "--out", "two.png", "--iterations", "1"]) == 2
    assert "--out two.png names one PNG but 2 images were given" in capsys.readouterr().err
    assert not (tmp_path / "two.png").exists()


@pytest.mark.parametrize("out", [[], ["--out", "maps"]])
def test_explain_refuses_two_images_that_would_share_an_output(out, tmp_path, monkeypatch, capsys):
    from sas_fast.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sas_fast.cli._model", lambda name: pytest.fail("the model was loaded"))
    assert main(["explain", "one/a.png", "two/a.png", *out, "--iterations", "1"]) == 2
    assert "one/a.png and two/a.png would both be written to" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []                   # no --out folder made


# --- no process-wide side effects; the precision used on the trace -----------------------------

def test_attribute_tunes_malloc_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(sys.modules["sas_fast.attribute"], "tune_malloc", lambda: calls.append(1))
    monkeypatch.delenv("SAS_FAST_TUNE_MALLOC", raising=False)
    attribute(small_net().eval(), images(), 0, iterations=1)
    assert calls == []
    monkeypatch.setenv("SAS_FAST_TUNE_MALLOC", "1")
    attribute(small_net().eval(), images(), 0, iterations=1)
    assert calls == [1]


def test_the_cli_tunes_malloc_for_its_own_process(monkeypatch):
    from sas_fast.cli import main

    calls = []
    monkeypatch.setattr("sas_fast.cli.tune_malloc", lambda: calls.append(1))
    assert main(["explain", "--demo", "--iterations", "0"]) == 2
    assert calls == [1]


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_the_trace_records_the_precision_used(precision):
    net = small_net().eval()
    _, trace = attribute(net, images(), 0, iterations=1, precision=precision, return_trace=True)
    expected = resolve_precision(precision, "cpu", torch.float32)
    assert (trace.precision, trace.precision_reason) == tuple(expected)
    _, trace = run_sas(net.double(), images().double(), 0, config=make_config(iterations=1, precision="auto"),
                       return_trace=True)
    assert trace.precision == "fp32" and "float64" in trace.precision_reason
