"""``sharpness_start``: the masks' sharpness annealed geometrically over the run."""
import pytest
import torch

from sas_fast import attribute, ops
from sas_fast.config import make_config
from sas_fast.iteration import IterationRunner
from sas_fast.step import Objective
from test_attribute import TextureDetector, textured_images


def test_the_path_runs_geometrically_from_start_to_sharpness():
    config = make_config(iterations=5, sharpness=20.0, sharpness_start=5.0)
    path = [config.sharpness_at(i) for i in range(5)]
    assert path[0] == pytest.approx(5.0) and path[-1] == pytest.approx(20.0)
    ratios = [b / a for a, b in zip(path, path[1:])]
    assert ratios == pytest.approx([2 ** 0.5] * 4)
    assert make_config(sharpness=12.0).sharpness_at(3) == 12.0
    assert make_config(iterations=1, sharpness_start=5.0).sharpness_at(0) == 20.0


def test_each_iteration_solves_at_its_sharpness(monkeypatch):
    seen = []
    solve = ops.solve_thresholds
    monkeypatch.setattr(ops, "solve_thresholds", lambda s, a, sharpness, *args, **kw:
                        seen.append(sharpness) or solve(s, a, sharpness, *args, **kw))
    config = make_config("fast", iterations=3, num_masks=5, sharpness=16.0, sharpness_start=4.0,
                         backend="reference", window=5, max_blur=2.0)
    images = textured_images(1)
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend="reference")
    runner = IterationRunner(torch.randn(1, 1, 36, 36).requires_grad_(True), pyramid,
                             Objective(TextureDetector().eval(), images, torch.zeros(1, dtype=torch.long)), config)
    for _ in range(3):
        runner()
    assert seen == pytest.approx([4.0, 8.0, 16.0])


def test_a_start_equal_to_the_end_is_the_constant_run_and_another_start_is_not():
    model, images = TextureDetector().eval(), textured_images()
    plain = attribute(model, images, 0, iterations=5, num_masks=8)
    torch.testing.assert_close(attribute(model, images, 0, iterations=5, num_masks=8, sharpness_start=20.0),
                               plain, rtol=0, atol=0)
    assert not torch.equal(attribute(model, images, 0, iterations=5, num_masks=8, sharpness_start=5.0), plain)


@pytest.mark.parametrize("options, message", [
    ({"sharpness_start": 0.0}, r"sharpness_start must be None or a finite number in \(0, 100000\], got 0.0"),
    ({"sharpness_start": "5"}, r"sharpness_start must be None or a finite number"),
    ({"sharpness_start": 5.0, "cuda_graph": True},
     "cuda_graph=True replays one fixed iteration: it needs sharpness_start=None"),
])
def test_bad_starts_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        make_config(**options)
