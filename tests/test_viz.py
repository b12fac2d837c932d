"""Pictures: overlays keep the photo's size, figures are written."""
import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402

from sas_fast import viz  # noqa: E402
from sas_fast.attribute import SaSTrace  # noqa: E402
from sas_fast.evaluate import GameResult  # noqa: E402


def test_overlay_resizes_saliency_to_the_photo_and_blends():
    photo = np.zeros((37, 52, 3), np.uint8)
    sal = torch.zeros(8, 8)
    sal[:4] = 1.0
    out = viz.overlay(photo, sal, alpha=1.0)
    assert out.shape == (37, 52, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > 100 and out[-1, 0, 2] > 100      # jet: 1 is red, 0 is blue
    assert (viz.overlay(photo, sal, alpha=0.0) == 0).all()


def test_figures_are_written(tmp_path):
    r = torch.linspace(0, 1, 11, dtype=torch.float64)
    res = GameResult(ratios=r, insertion=r.expand(3, -1), deletion=1 - r.expand(3, -1),
                     target=torch.zeros(3, dtype=torch.long))
    viz.plot_game_curves({"a": res}, tmp_path / "curves.png")
    trace = SaSTrace(areas=torch.linspace(0, 1, 5), iterations=[0, 9],
                     scores={"insertion": torch.rand(2, 1, 5)}, saliency=torch.rand(2, 1, 8, 8),
                     loss=torch.zeros(10, 1), passes=torch.full((1,), 30))
    viz.plot_score_profiles(trace, tmp_path / "profiles.png")
    viz.attribution_grid([np.random.rand(16, 20, 3)], [[torch.rand(16, 20), torch.rand(4, 5)]],
                         ["x", "y"], tmp_path / "grid.png")
    for name in ("curves", "profiles", "grid"):
        assert matplotlib.image.imread(tmp_path / f"{name}.png").shape[0] > 100
