"""The SAGA control variate over the sampled areas (``control_variate=True``): the per-area
gradients sum to the step's gradient, the combined update is unbiased over draws, exact when
the table is current, and the option is refused where its unbiasedness does not hold."""
import pytest
import torch

from sas_fast import attribute, ops
from sas_fast.config import SaSConfig, make_config
from sas_fast.control_variate import AreaGradientTable
from sas_fast.sampling import AreaSampler
from sas_fast.step import Objective, mask_areas, sas_step
from test_attribute import TextureDetector, textured_images


def _step_inputs(config):
    model = TextureDetector().eval().double()
    images = textured_images(2).double()
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend="reference")
    premask = torch.randn(2, 1, 36, 36, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return premask.requires_grad_(True), pyramid, Objective(model, images, torch.zeros(2, dtype=torch.long))


def test_per_area_gradients_sum_to_the_step_gradient():
    config = make_config(num_masks=8, backend="reference", window=5, max_blur=2.0)
    premask, pyramid, objective = _step_inputs(config)
    areas = mask_areas(8, torch.float64)[[2, 5]]
    sas_step(premask, pyramid, objective, config, None, areas)
    plain = premask.grad.clone()
    premask.grad = None
    seen = []
    sas_step(premask, pyramid, objective, config, None, areas,
             combine=lambda grads: seen.append(grads) or grads.sum(0))
    assert seen[0].shape == (2, 2, 1, 32, 32)
    assert seen[0][0].abs().sum() > 0 and not torch.allclose(seen[0][0], seen[0][1])
    torch.testing.assert_close(premask.grad, plain, rtol=1e-10, atol=1e-12)


def test_the_update_is_unbiased_over_draws_and_exact_with_a_current_table():
    """Fixed per-area gradients g (a toy loss), a table of stale values: over many stratified
    draws the mean update is sum_k g_k / n; with the table equal to g every draw gives it."""
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(18, 1, 1, 4, 4, generator=generator, dtype=torch.float64)
    stale = g + torch.randn(18, 1, 1, 4, 4, generator=generator, dtype=torch.float64)
    expected = g.sum(0) / 9
    updates = []
    for seed in range(2000):
        table = AreaGradientTable(18, 9)
        table.table = stale.clone()
        index = AreaSampler(SaSConfig(area_samples=2, seed=seed))()
        updates.append(table(index, g[index]))
    updates = torch.stack(updates)
    se = updates.std(0) / len(updates) ** 0.5
    assert ((updates.mean(0) - expected).abs() < 4 * se).all()
    current = AreaGradientTable(18, 9)
    current.table = g.clone()
    for seed in range(5):
        index = AreaSampler(SaSConfig(area_samples=2, seed=seed))()
        torch.testing.assert_close(current(index, g[index]), expected, rtol=1e-12, atol=1e-12)


def test_the_table_lowers_the_variance_once_filled():
    """Slowly drifting gradients: after a warm-up the SAGA update scatters less around the
    full gradient than the plain sampled update."""
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(18, 1, 1, 4, 4, generator=generator, dtype=torch.float64)
    sampler = AreaSampler(SaSConfig(area_samples=2, seed=3))
    table = AreaGradientTable(18, 9)
    saga, plain = [], []
    for it in range(200):
        g = base * (1 + 0.002 * it)
        index = sampler()
        update = table(index, g[index])
        if it >= 50:
            saga.append((update - g.sum(0) / 9).square().sum())
            plain.append((g[index].sum(0) - g.sum(0) / 9).square().sum())
    assert torch.stack(saga).mean() < 0.1 * torch.stack(plain).mean()


def test_full_areas_with_the_table_equal_the_plain_run():
    model, images = TextureDetector().eval(), textured_images()
    a = attribute(model, images, 0, iterations=5, num_masks=8, area_samples=6, control_variate=True)
    b = attribute(model, images, 0, iterations=5, num_masks=8, area_samples=None)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    c = attribute(model, images, 0, iterations=5, num_masks=8, area_samples=2, control_variate=True)
    assert not torch.equal(c, attribute(model, images, 0, iterations=5, num_masks=8, area_samples=2))


@pytest.mark.parametrize("options, named", [({}, "area_samples=None"),
                                            ({"area_samples": 2, "area_sampling": "balanced"}, "'balanced'")])
def test_the_control_variate_is_refused_without_independent_draws(options, named):
    with pytest.raises(ValueError, match=f"control_variate=True needs sampled areas.*{named}"):
        make_config("paper-cifar", control_variate=True, **options)
    with pytest.raises(ValueError, match="control_variate must be True or False"):
        make_config(control_variate=1, area_samples=2)
