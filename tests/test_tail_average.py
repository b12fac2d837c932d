"""``average_tail``: the map is the schedule of the mean pre-mask over the run's last iterations."""
import pytest
import torch

from sas_fast import attribute, ops
from sas_fast.config import make_config
from sas_fast.iteration import IterationRunner
from sas_fast.step import Objective
from test_attribute import TextureDetector, textured_images

OPTIONS = dict(preset="paper-cifar", iterations=8, num_masks=5, backend="reference", precision="fp32",
               window=5, max_blur=2.0, lr=0.2)


def _oracle(images, target, tail: int):
    """The normalised schedule of the mean of the pre-masks after each of the last ``tail`` of 8
    steps, from the same start and the same steps, averaged here in float64."""
    config = make_config(**OPTIONS)
    model = TextureDetector().eval()
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend="reference")
    noise = torch.randn(1, 1, 36, 36, generator=torch.Generator().manual_seed(config.seed))
    premask = noise.expand(len(images), -1, -1, -1).clone().requires_grad_(True)
    runner = IterationRunner(premask, pyramid, Objective(model, images, target), config)
    kept = []
    for _ in range(config.iterations):
        runner()
        kept.append(premask.detach().double().clone())
    mean = torch.stack(kept[-tail:]).mean(0)
    schedule = ops.smooth_softmax_pool(mean, 5, backend="reference").squeeze(1)
    lo, hi = schedule.amin(dim=(1, 2), keepdim=True), schedule.amax(dim=(1, 2), keepdim=True)
    return ((schedule - lo) / (hi - lo)).float()


@pytest.mark.parametrize("fraction, tail", [(0.5, 4), (0.3, 2), (1.0, 8), (0.01, 1)])
def test_the_map_is_the_schedule_of_the_mean_tail_pre_mask(fraction, tail):
    images, target = textured_images(2), torch.zeros(2, dtype=torch.long)
    assert make_config(**OPTIONS, average_tail=fraction).average_start() == 8 - tail
    averaged = attribute(TextureDetector().eval(), images, target, average_tail=fraction, progress=False,
                         **OPTIONS)
    torch.testing.assert_close(averaged, _oracle(images, target, tail), atol=2e-6, rtol=0)
    last = attribute(TextureDetector().eval(), images, target, progress=False, **OPTIONS)
    if tail > 1:    # averaging moves the map; a tail of one step is the last pre-mask
        assert (averaged - last).abs().max() > 1e-3
    else:
        torch.testing.assert_close(averaged, last, atol=1e-6, rtol=0)


def test_no_average_by_default_and_bad_fractions_are_named():
    assert make_config("paper-cifar").average_start() is None
    assert make_config("paper-cifar", iterations=112, average_tail=0.5).average_start() == 56
    for bad in (-0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match=r"average_tail must be a number in \[0, 1\]"):
            make_config("paper-cifar", average_tail=bad)


def test_a_run_stopped_before_the_tail_keeps_its_last_pre_mask():
    # max_seconds so small that only the first iteration runs: the tail (the last 4) is never reached
    images, target = textured_images(1), torch.zeros(1, dtype=torch.long)
    averaged, trace = attribute(TextureDetector().eval(), images, target, average_tail=0.5, max_seconds=1e-9,
                                return_trace=True, progress=False, **OPTIONS)
    one, _ = attribute(TextureDetector().eval(), images, target, max_seconds=1e-9, return_trace=True,
                       progress=False, **OPTIONS)
    assert trace.loss.shape[0] < 8
    torch.testing.assert_close(averaged, one, atol=0, rtol=0)
