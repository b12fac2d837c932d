"""Noisy Linear Imputation: the fixed point, solver agreement, kept pixels, noise, edge cases."""
import pytest
import torch
import torch.nn.functional as F

from sas_fast.evaluate.nli import neighbour_mean, nli_impute

SOLVERS = ["scipy", "torch"]


def blob_keep(b, h, w, p, seed=0):
    """Saliency-like masks: the top-p of a smooth random field (large connected holes)."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(b, 1, max(2, h // 6), max(2, w // 6), generator=g), size=(h, w),
                          mode="bilinear", align_corners=False)[:, 0]
    field = field + 1e-6 * torch.rand(b, h, w, generator=g)
    cut = field.flatten(1).quantile(1 - p, dim=1)[:, None, None]
    return field >= cut


def masks(b, h, w):
    g = torch.Generator().manual_seed(1)
    return {"iid": torch.rand(b, h, w, generator=g) < 0.4, "blob10": blob_keep(b, h, w, 0.1),
            "blob70": blob_keep(b, h, w, 0.7)}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", ["iid", "blob10", "blob70"])
def test_fixed_point(solver, kind):
    """Every imputed pixel is the border-renormalised weighted mean of its 8 neighbours."""
    x = torch.randn(2, 3, 19, 26, dtype=torch.float64)
    keep = masks(2, 19, 26)[kind]
    out = nli_impute(x, keep, noise=0.0, solver=solver)
    defect = (out - neighbour_mean(out)).abs().permute(1, 0, 2, 3)[:, ~keep]
    assert defect.max() < 1e-7
    assert not torch.allclose(out, torch.zeros_like(out))


def test_neighbour_mean_weights():
    """Axial 1/6, diagonal 1/12, divided by the in-image weight sum at the border."""
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 0, 1], x[0, 0, 1, 1] = 1.0, 2.0
    m = neighbour_mean(x)[0, 0]
    assert m[1, 1] == pytest.approx(1 / 6)
    assert m[0, 0] == pytest.approx((1 / 6 * 1 + 1 / 12 * 2) / (5 / 12))
    assert m[0, 1] == pytest.approx((1 / 6 * 2) / (2 / 3))
    assert m[2, 2] == pytest.approx((1 / 12 * 2) / (5 / 12))


@pytest.mark.parametrize("size", [(32, 32), (17, 40), (64, 48)])
def test_solvers_agree(size):
    h, w = size
    x = torch.randn(3, 3, h, w)
    for keep in masks(3, h, w).values():
        a = nli_impute(x, keep, noise=0.0, solver="scipy")
        b = nli_impute(x, keep, noise=0.0, solver="torch")
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("solver", SOLVERS)
def test_kept_pixels_untouched_and_dtype(solver):
    x = torch.randn(2, 3, 16, 16)
    keep = masks(2, 16, 16)["iid"]
    out = nli_impute(x, keep, noise=0.01, generator=torch.Generator().manual_seed(0), solver=solver)
    assert out.dtype == x.dtype and out.shape == x.shape
    k = keep[:, None].expand_as(x)
    assert torch.equal(out[k], x[k])
    assert not torch.equal(out[~k], x[~k])


@pytest.mark.parametrize("solver", SOLVERS)
def test_single_known_pixel_gives_constant(solver):
    """One kept pixel: the harmonic fill of a connected grid is that pixel's value everywhere."""
    x = torch.randn(1, 3, 12, 15, dtype=torch.float64)
    keep = torch.zeros(1, 12, 15, dtype=torch.bool)
    keep[0, 4, 9] = True
    out = nli_impute(x, keep, noise=0.0, solver=solver)
    assert torch.allclose(out, x[:, :, 4:5, 9:10].expand_as(out), atol=1e-6)


def test_noise_statistics_and_reproducibility():
    x = torch.randn(4, 3, 48, 48)
    keep = blob_keep(4, 48, 48, 0.3)
    clean = nli_impute(x, keep, noise=0.0, solver="torch")
    noisy = nli_impute(x, keep, noise=0.01, generator=torch.Generator().manual_seed(5), solver="torch")
    again = nli_impute(x, keep, noise=0.01, generator=torch.Generator().manual_seed(5), solver="torch")
    other = nli_impute(x, keep, noise=0.01, generator=torch.Generator().manual_seed(6), solver="torch")
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    k = keep[:, None].expand_as(x)
    d = (noisy - clean)[~k].double()
    assert d.numel() > 10000
    assert abs(float(d.mean())) < 4 * 0.01 / d.numel() ** 0.5
    assert float(d.std()) == pytest.approx(0.01, rel=0.03)
    assert torch.equal((noisy - clean)[k], torch.zeros(int(k.sum())))


@pytest.mark.parametrize("solver", SOLVERS)
def test_all_kept_and_all_removed(solver):
    x = torch.randn(3, 3, 10, 10)
    all_kept = torch.ones(3, 10, 10, dtype=torch.bool)
    assert torch.equal(nli_impute(x, all_kept, noise=0.01, solver=solver), x)
    none_kept = torch.zeros(3, 10, 10, dtype=torch.bool)
    assert torch.equal(nli_impute(x, none_kept, noise=0.0, solver=solver), torch.zeros_like(x))
    noisy = nli_impute(x, none_kept, noise=0.01, generator=torch.Generator().manual_seed(0), solver=solver)
    assert float(noisy.std()) == pytest.approx(0.01, rel=0.15) and abs(float(noisy.mean())) < 0.003


def test_mixed_batch_matches_single_images():
    """All-kept, all-removed and partial images in one batch: each as if alone."""
    x = torch.randn(3, 3, 20, 20)
    keep = torch.stack([torch.ones(20, 20, dtype=torch.bool), torch.zeros(20, 20, dtype=torch.bool),
                        masks(1, 20, 20)["blob10"][0]])
    out = nli_impute(x, keep, noise=0.0, solver="torch")
    for i in range(3):
        assert torch.allclose(out[i:i + 1], nli_impute(x[i:i + 1], keep[i:i + 1], noise=0.0, solver="scipy"),
                              atol=1e-5)


def test_rejects_bad_arguments():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError):
        nli_impute(x, torch.ones(1, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError):
        nli_impute(x, torch.ones(1, 8, 8, dtype=torch.bool), solver="cholesky")
    with pytest.raises(ValueError, match="images must be floating point, got torch.int64"):
        nli_impute((100 * x).long(), torch.rand(1, 8, 8) > 0.5)


def test_torch_solver_warns_when_not_converged():
    from sas_fast.evaluate.nli import _solve_torch

    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with pytest.warns(UserWarning, match="stopped after 1 refinements"):
        _solve_torch(x, blob_keep(1, 64, 64, 0.1), max_iter=1, refine=1)
