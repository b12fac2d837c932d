"""sas_fast.SaS as a Captum attribution: a PerturbationAttribution with Captum's properties,
shown by captum.attr.visualization, wrapped by NoiseTunnel; built lazily, so ``import
sas_fast`` does not import Captum and an install without Captum still has ``SaS``."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sas_fast
from tiny_model import make

captum_attr = pytest.importorskip("captum.attr")

REPO = Path(__file__).resolve().parent.parent
OPTIONS = dict(preset="fast", iterations=3, num_masks=5, backend="reference", precision="fp32")


@pytest.fixture(scope="module")
def batch():
    model, _ = make()
    return model, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])


def test_sas_is_a_captum_perturbation_attribution(batch):
    model, x, target = batch
    explainer = sas_fast.SaS(model, **OPTIONS)
    assert isinstance(explainer, captum_attr.PerturbationAttribution)
    assert explainer.forward_func is model and explainer.model is model
    assert explainer.get_name() == "SaS" and not explainer.has_convergence_delta()
    assert explainer.multiplies_by_inputs
    out = explainer.attribute(x, target=target)
    assert torch.equal(out, sas_fast.attribute(model, x, target, **OPTIONS)[:, None])


def test_visualize_image_attr_shows_the_map(batch):
    """Captum's heat map of the ``H x W x 1`` map, with no outliers clipped, is the map itself
    (SaS maps are in [0, 1] with maximum 1); the blended view draws image and map."""
    import matplotlib

    matplotlib.use("Agg")
    from captum.attr import visualization

    model, x, target = batch
    attr = sas_fast.SaS(model, **OPTIONS).attribute(x, target=target)
    attr_hwc = attr[0].permute(1, 2, 0).numpy()
    fig, ax = visualization.visualize_image_attr(attr_hwc, method="heat_map", sign="positive",
                                                 outlier_perc=0, use_pyplot=False)
    np.testing.assert_allclose(ax.images[0].get_array(), attr[0, 0].numpy(), rtol=1e-6)
    image = (x[0].permute(1, 2, 0).numpy() - x.min().item()) / (x.max() - x.min()).item()
    fig, ax = visualization.visualize_image_attr(attr_hwc, image, method="blended_heat_map",
                                                 sign="positive", use_pyplot=False)
    assert len(ax.images) == 2


def test_noise_tunnel_averages_sas_over_noisy_copies(batch):
    """NoiseTunnel(SaS) = the mean of SaS's maps of the noisy copies it draws (the same draws:
    the same seed of the global generator; SaS's own pre-mask does not use it)."""
    model, x, target = batch
    explainer = sas_fast.SaS(model, **OPTIONS)
    torch.manual_seed(7)
    smoothed = captum_attr.NoiseTunnel(explainer).attribute(x, nt_samples=3, stdevs=0.2, target=target)
    torch.manual_seed(7)
    noisy = x.repeat_interleave(3, 0) + torch.normal(0, torch.full((6, 3, 16, 16), 0.2))
    maps = sas_fast.attribute(model, noisy, target.repeat_interleave(3), **OPTIONS)
    assert smoothed.shape == (2, 1, 16, 16)
    torch.testing.assert_close(smoothed, maps.view(2, 3, 1, 16, 16).mean(1), rtol=1e-6, atol=1e-6)


BLOCK_CAPTUM = """
import sys
import torch
import sas_fast
assert "captum" not in sys.modules, "import sas_fast imported captum"


class NoCaptum:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "captum":
            raise ModuleNotFoundError("No module named 'captum'")


sys.meta_path.insert(0, NoCaptum())
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
explainer = sas_fast.SaS(model.eval(), iterations=2, num_masks=6)
attr = explainer.attribute(torch.rand(2, 3, 8, 8), 1)
print([c.__name__ for c in type(explainer).__mro__], tuple(attr.shape))
"""


def test_import_does_not_load_captum_and_sas_works_without_it():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", BLOCK_CAPTUM], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['SaS',", "'_SaS',", "'object']", "(2,", "1,", "8,", "8)"]
