"""sas_fast.quantus.explain as Quantus's explain_func: numpy in and out, options through
explain_func_kwargs, Quantus's own keywords (device) accepted, the same maps as the direct calls.

Quantus 0.6.0's own quirks, worked around here: PixelFlipping checks ``features_in_step``
against H x W but flips C x H x W values one at a time (so a curve has C x H x W /
features_in_step points); its ``return_auc_per_sample`` calls ``np.trapz`` (gone in numpy 2.4),
so it is left off; ROAD fails on 3-channel images (it indexes C x H x W positions into an H x W
imputation), so it runs here on a one-channel model.
"""
import numpy as np
import pytest
import torch

import sas_fast
from sas_fast import baselines
from sas_fast.quantus import METHODS, explain
from tiny_model import make

quantus = pytest.importorskip("quantus")
pytest.importorskip("captum")

SAS = dict(preset="fast", iterations=3, num_masks=5, backend="reference", precision="fp32")
QUIET = dict(disable_warnings=True, display_progressbar=False)
OPTIONS = {"sas": SAS, "integrated_gradients": {"n_steps": 8}, "extremal_perturbation": {"max_iter": 5}}


@pytest.fixture(scope="module")
def batch():
    model, _ = make()
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(-1).numpy()
    return model, x, y


def _direct(model, x, y, method) -> np.ndarray:
    """The method called as the library documents it, on tensors: ``B x 1 x H x W``."""
    images, target = torch.from_numpy(x), torch.from_numpy(y)
    if method == "sas":
        maps = sas_fast.attribute(model, images, target, **SAS)
    else:
        maps = getattr(baselines, method)(model, images, target, **OPTIONS.get(method, {}))
    return maps.numpy()[:, None]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_numpy_in_numpy_out_same_maps_as_the_direct_call(batch, method):
    if method == "extremal_perturbation" and not baselines.HAS_TORCHRAY:
        pytest.skip("TorchRay is not installed")
    model, x, y = batch
    a = explain(model=model, inputs=x, targets=y, method=method, device="cpu", **OPTIONS.get(method, {}))
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (4, 1, 16, 16)
    np.testing.assert_array_equal(a, _direct(model, x, y, method))


def test_pixel_flipping_and_region_perturbation_score_the_maps_they_are_given(batch):
    """The metrics run with explain_func and SaS options in explain_func_kwargs, and give what
    they give for the maps of a direct call (which the default 200 iterations would not)."""
    model, x, y = batch
    metrics = {"PixelFlipping": lambda: quantus.PixelFlipping(features_in_step=16, **QUIET),
               "RegionPerturbation": lambda: quantus.RegionPerturbation(patch_size=4, regions_evaluation=5,
                                                                        **QUIET)}
    a_direct = _direct(model, x, y, "sas")
    for name, metric in metrics.items():
        via_explain = metric()(model=model, x_batch=x, y_batch=y, explain_func=explain,
                               explain_func_kwargs=dict(SAS), device="cpu")
        direct = metric()(model=model, x_batch=x, y_batch=y, a_batch=a_direct, device="cpu")
        assert np.isfinite(via_explain).all(), name
        np.testing.assert_array_equal(via_explain, direct, err_msg=name)
    assert np.asarray(via_explain).shape == (4, 5)
    assert np.asarray(metrics["PixelFlipping"]()(model=model, x_batch=x, y_batch=y, a_batch=a_direct)).shape \
        == (4, 3 * 16 * 16 // 16)


@pytest.mark.parametrize("method", ["sas", "grad_cam"])
def test_mprt_randomises_the_model_it_explains(batch, method):
    """MPRT: the unchanged model's map is reproduced exactly (similarity 1), the randomised
    models' maps differ, and the caller's model is untouched."""
    model, x, y = batch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = quantus.MPRT(**QUIET)(model=model, x_batch=x, y_batch=y, explain_func=explain,
                                   explain_func_kwargs={"method": method, **OPTIONS.get(method, {})})
    layers = [name for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert sorted(scores) == sorted(["original", *layers])
    np.testing.assert_allclose(scores["original"], 1.0, rtol=1e-6)
    assert min(float(np.mean(scores[layer])) for layer in layers) < 0.99
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_road_on_one_channel_images():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    y = model(torch.from_numpy(x)).argmax(-1).numpy()
    scores = quantus.ROAD(percentages=[10, 40, 70], **QUIET)(model=model, x_batch=x, y_batch=y, device="cpu",
                                                          explain_func=explain, explain_func_kwargs=SAS)
    assert sorted(scores) == [10, 40, 70] and all(0 <= v <= 1 for v in scores.values())


@pytest.mark.parametrize("call, message", [
    (dict(method="lime"), "method must be one of"),
    (dict(method="gradient", n_steps=4), "method 'gradient' has no option(s) ['n_steps']"),
    (dict(method="sas", lr_typo=0.1), "unknown SaS option(s) ['lr_typo']"),
    (dict(return_trace=True), "return_trace=True is not allowed"),
    (dict(device="gpu"), "device must be a torch device"),
    (dict(device="meta"), "device is 'meta' but the model's parameters are on cpu"),
])
def test_bad_arguments_are_one_clear_error(batch, call, message):
    model, x, y = batch
    with pytest.raises(ValueError) as err:
        explain(model, x, y, **call)
    assert message in str(err.value)
