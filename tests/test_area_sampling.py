"""The area draws of ``area_sampling``: each keeps every sampled area uniform within its stratum
(so the loss estimate stays unbiased), antithetic pairs reflect, balanced cycles cover."""
import pytest
import torch

from sas_fast import attribute
from sas_fast.config import AREA_SAMPLINGS, SaSConfig, make_config
from sas_fast.sampling import AreaSampler
from test_attribute import TextureDetector, textured_images


def draws(sampling, samples, iterations, seed=0, num_masks=20):
    sampler = AreaSampler(SaSConfig(num_masks=num_masks, area_samples=samples, area_sampling=sampling, seed=seed))
    return torch.stack([sampler() for _ in range(iterations)])


@pytest.mark.parametrize("sampling", AREA_SAMPLINGS)
@pytest.mark.parametrize("samples", [1, 2, 3, 6])
def test_every_iteration_draws_each_stratum_uniformly(sampling, samples):
    """Over seeds, the area drawn at a fixed iteration is uniform within each stratum (the
    condition for an unbiased estimate), also at the cycle's later iterations."""
    stratum, seeds = 18 // samples, 600
    for iteration in (0, stratum - 1, stratum + 1):
        picked = torch.stack([draws(sampling, samples, iteration + 1, seed=s)[-1] for s in range(seeds)])
        assert torch.equal(picked // stratum, torch.arange(samples).expand(seeds, -1))   # one per stratum
        counts = torch.bincount(picked.flatten(), minlength=18).double()
        expected = seeds / stratum
        assert (counts - expected).abs().max() < 5 * expected ** 0.5, (iteration, counts)


CURVE = torch.linspace(0, 1, 18, dtype=torch.float64) ** 2      # a monotone score curve over the areas
WIGGLY = CURVE + 0.3 * torch.sin(torch.arange(18.0, dtype=torch.float64))


def _toy_loss_estimates(sampling, z=WIGGLY, seeds=400):
    """``weight * sum of the sampled z_k`` for a fixed score curve z, one per seed and
    iteration; and the full sum."""
    estimates = []
    for seed in range(seeds):
        sampler = AreaSampler(SaSConfig(area_samples=2, area_sampling=sampling, seed=seed))
        estimates.append(torch.stack([sampler.weight * z[sampler()].sum() for _ in range(4)]))
    return torch.stack(estimates), z.sum()


@pytest.mark.parametrize("sampling", AREA_SAMPLINGS)
def test_the_loss_estimate_is_unbiased_over_seeds(sampling):
    estimates, full = _toy_loss_estimates(sampling)
    per_seed = estimates.mean(1)
    se = per_seed.std() / len(per_seed) ** 0.5
    assert (per_seed.mean() - full).abs() < 4 * se
    assert estimates.std() > 0


def test_antithetic_draws_vary_less_on_a_monotone_loss():
    stratified, _ = _toy_loss_estimates("stratified", CURVE)
    antithetic, _ = _toy_loss_estimates("antithetic", CURVE)
    assert antithetic.var() < 0.5 * stratified.var()


@pytest.mark.parametrize("samples", [2, 3, 6])
def test_antithetic_areas_come_in_reflected_pairs(samples):
    for sampling in ("antithetic", "balanced-antithetic"):
        index = draws(sampling, samples, 30)
        mirrored = index.flip(1)
        pairs = slice(0, samples // 2)               # a middle stratum (samples odd) draws alone
        assert torch.equal(index[:, pairs] + mirrored[:, pairs], torch.full_like(index[:, pairs], 17))


@pytest.mark.parametrize("sampling", ["balanced", "balanced-antithetic"])
@pytest.mark.parametrize("samples", [1, 2, 3])
def test_balanced_draws_visit_every_area_once_per_cycle(sampling, samples):
    stratum = 18 // samples
    index = draws(sampling, samples, 3 * stratum)
    for cycle in index.split(stratum):
        assert torch.equal(cycle.flatten().sort().values, torch.arange(18))
    assert not torch.equal(index[:stratum], index[stratum:2 * stratum])      # a fresh order each cycle


def test_stratified_draws_are_unchanged_by_the_option():
    """``stratified`` is the sampler the presets were chosen with: the same draws as before
    ``area_sampling`` existed (independent ``randint`` per stratum from the seed + 1 generator)."""
    generator = torch.Generator().manual_seed(1)
    expected = torch.stack([torch.arange(0, 18, 9) + torch.randint(9, (2,), generator=generator) for _ in range(5)])
    assert torch.equal(draws("stratified", 2, 5), expected)


def test_unknown_area_sampling_is_named():
    with pytest.raises(ValueError, match=r"unknown area_sampling 'sobol'; choose one of \('stratified'"):
        make_config(area_sampling="sobol")


def test_balanced_sampling_runs_in_attribute_and_is_seeded():
    model = TextureDetector().eval()
    images = textured_images()
    a = attribute(model, images, 0, iterations=6, num_masks=8, area_samples=2, area_sampling="balanced-antithetic")
    b = attribute(model, images, 0, iterations=6, num_masks=8, area_samples=2, area_sampling="balanced-antithetic")
    c = attribute(model, images, 0, iterations=6, num_masks=8, area_samples=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
