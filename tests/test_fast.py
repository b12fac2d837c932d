"""Spending fewer model passes: the stratified area sampler, the learning-rate decay, the passes
count, saliency snapshots, presets honoured by ``attribute`` and ``SaS``, and the fast preset."""
import pytest
import torch

from sas_fast import SaS, attribute
from sas_fast import config as sas_config
from sas_fast.config import SaSConfig, make_config
from sas_fast.iteration import IterationRunner
from sas_fast.sampling import AreaSampler
from sas_fast.step import Objective, mask_areas, sas_step
from test_attribute import TextureDetector, region_recall, textured_images


@pytest.fixture
def model():
    return TextureDetector().eval()


@pytest.mark.parametrize("samples", [1, 2, 3, 6, 9])
def test_sampler_draws_one_area_per_stratum_and_covers_every_area(samples):
    sampler = AreaSampler(SaSConfig(area_samples=samples))
    stratum = 18 // samples
    seen = torch.zeros(18, dtype=torch.long)
    for _ in range(200):
        index = sampler()
        assert index.shape == (samples,)
        assert torch.equal(index // stratum, torch.arange(samples))     # one per stratum, in order
        seen[index] += 1
    assert (seen > 0).all()
    # uniform within a stratum: every area drawn about 200 / stratum times
    assert (seen - 200 / stratum).abs().max() < 5 * (200 / stratum) ** 0.5


def test_sampler_is_seeded_and_all_areas_without_sampling():
    draws = [[AreaSampler(SaSConfig(area_samples=3, seed=s))() for _ in range(5)] for s in (0, 0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1]))
    assert not all(torch.equal(a, b) for a, b in zip(draws[0], draws[2]))
    assert torch.equal(AreaSampler(SaSConfig(num_masks=7))(), torch.arange(5))


def test_area_samples_must_divide_the_inner_areas():
    with pytest.raises(ValueError, match=r"area_samples must divide the 18 inner areas.*\[1, 2, 3, 6, 9, 18\]"):
        make_config(area_samples=4)
    with pytest.raises(ValueError, match="lr_decay"):
        make_config(lr_decay="step")


def test_sampled_loss_is_an_unbiased_estimate_of_the_full_loss(model):
    """``weight * sum of the sampled areas' scores``, averaged over draws, is the full sum."""
    config = make_config(num_masks=8, area_samples=2, backend="reference", window=5, max_blur=2.0)
    images = textured_images(1)
    premask = torch.randn(1, 1, 36, 36, generator=torch.Generator().manual_seed(3), requires_grad=True)
    from sas_fast import ops
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend="reference")
    objective = Objective(model, images, torch.zeros(1, dtype=torch.long))
    full = sas_step(premask, pyramid, objective, config, None)
    inner = mask_areas(8)[1:-1]
    sampler = AreaSampler(config)
    estimates = []
    for _ in range(60):
        index = sampler()
        step = sas_step(premask, pyramid, objective, config, None, inner[index])
        estimates.append(sampler.weight * step.loss)
    estimates = torch.stack(estimates)
    se = estimates.std() / len(estimates) ** 0.5
    assert (estimates.mean() - full.loss).abs() < 4 * se + 1e-6
    assert estimates.std() > 0                         # it did sample different areas


def test_cosine_decay_runs_the_learning_rate_down_to_zero(model):
    config = make_config("fast", iterations=8, lr=0.2, lr_decay="cosine", num_masks=5, backend="reference",
                         window=5, max_blur=2.0)
    images = textured_images(1)
    from sas_fast import ops
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend="reference")
    premask = torch.randn(1, 1, 36, 36).requires_grad_(True)
    runner = IterationRunner(premask, pyramid, Objective(model, images, torch.zeros(1, dtype=torch.long)),
                             config)
    rates = []
    for _ in range(8):
        rates.append(runner.optimizer.param_groups[0]["lr"])
        runner()
    assert rates[0] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[4] == pytest.approx(0.1) and rates[-1] < 0.01


def test_passes_and_snapshots_in_the_trace(model):
    images = textured_images()
    sal, trace = attribute(model, images, 0, preset="paper-cifar", iterations=6, num_masks=8, area_samples=3,
                           return_trace=True, trace_iterations=[0, 4])
    assert torch.equal(trace.passes, torch.tensor([6 * 2 * 3] * 2))
    assert trace.saliency.shape == (2, 2, 32, 32)
    # the snapshot at iteration 4 is the map of a 4-iteration run (same seeded area draws, constant lr)
    short = attribute(model, images, 0, preset="paper-cifar", iterations=4, num_masks=8, area_samples=3)
    torch.testing.assert_close(trace.saliency[1], short, rtol=0, atol=0)
    # masks not evaluated at a recorded iteration are NaN; the evaluated ones are finite
    ins = trace.scores["insertion"][0, 0]
    assert int(torch.isfinite(ins[1:-1]).sum()) == 3 and torch.isfinite(ins[[0, -1]]).all()


def test_full_sampling_equals_no_sampling(model):
    images = textured_images()
    a = attribute(model, images, 0, iterations=5, num_masks=8, area_samples=None)
    b = attribute(model, images, 0, iterations=5, num_masks=8, area_samples=6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_presets_are_honoured_by_attribute_and_sas(model, monkeypatch):
    monkeypatch.setitem(sas_config.PRESETS, "tiny", SaSConfig(iterations=3, num_masks=5, mode="insertion"))
    _, trace = attribute(model, textured_images(), 0, preset="tiny", return_trace=True)
    assert trace.loss.shape[0] == 3 and set(trace.scores) == {"insertion"}
    assert trace.passes[0] == 3 * 3
    _, trace = attribute(model, textured_images(), 0, preset="tiny", iterations=2, return_trace=True)
    assert trace.loss.shape[0] == 2                      # an explicit argument overrides the preset
    _, trace = SaS(model, preset="tiny").attribute(textured_images(), 0, return_trace=True)
    assert trace.loss.shape[0] == 3
    assert make_config("paper-imagenet").iterations == 800


def test_the_default_preset_is_the_fastest_schedule_and_the_fields_are_the_papers(model):
    assert make_config() == make_config("fastest") == SaSConfig(iterations=112, area_samples=2, lr=0.1,
                                                                average_tail=0.5, noise_scale=0.5)
    assert make_config("fast") == SaSConfig(iterations=300, area_samples=3, lr=0.1, lr_decay="cosine")
    paper = make_config("paper-cifar")
    assert paper == SaSConfig() and paper.iterations * paper.passes_per_iteration() == 7200
    _, trace = attribute(model, textured_images(1), 0, iterations=2, return_trace=True)
    assert int(trace.passes[0]) == 2 * 2 * 2            # 2 areas x 2 modes per iteration
    # a num_masks the default's 2 strata cannot split: the error says what to pass
    with pytest.raises(ValueError, match=r"one of \[1, 3, 9\] or None, got 2 .*preset='paper-cifar'"):
        attribute(model, textured_images(1), 0, num_masks=11)
    with pytest.raises(ValueError, match=r"one of \[1, 2, 4, 8\] or None, got 3 .*'fast' 3.*preset='paper-cifar'"):
        attribute(model, textured_images(1), 0, preset="fast", num_masks=10)


@pytest.mark.parametrize("preset, share", [("fast", 4), ("fastest", 16)])
def test_cheap_presets_cost_their_share_and_find_the_planted_region(model, preset, share):
    config = make_config(preset)
    assert config.iterations * config.passes_per_iteration() <= 7200 // share
    sal, trace = attribute(model, textured_images(), 0, preset=preset, return_trace=True)
    assert int(trace.passes[0]) <= 7200 // share
    assert (region_recall(sal) > 0.8).all(), region_recall(sal)
