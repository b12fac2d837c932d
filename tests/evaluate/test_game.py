"""The deletion / insertion game: a planted model where the right ranking is known, exact
counts, tie-breaking, resizing, batching, and the model left as found."""
import math

import pytest
import torch
from torch import nn

import sas_fast.evaluate.game as game_module
from sas_fast.evaluate import GameResult, deletion_game, pixel_ranks

H, W = 12, 12


class Planted(nn.Module):
    """Two classes; the logit of class 0 is ``10 (mean of the 3 x 3 region) - 5``: only those
    nine pixels matter. Has a BatchNorm (to check the train flag) and a parameter."""

    def __init__(self):
        super().__init__()
        region = torch.zeros(1, 1, H, W)
        region[..., 2:5, 6:9] = 1.0
        self.register_buffer("region", region / region.sum())
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.norm = nn.BatchNorm2d(1, affine=False, track_running_stats=False)

    def forward(self, x):
        z = self.scale * (x.mean(1, keepdim=True) * self.region).sum((1, 2, 3)) - 5.0
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def planted_images(b=6):
    """Bright region (1) on a dark, slightly textured background (about 0)."""
    x = 0.05 * torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(0))
    x[..., 2:5, 6:9] += 1.0
    return x


def right_saliency(b=6):
    s = torch.rand(b, H, W, generator=torch.Generator().manual_seed(1)) * 0.1
    s[:, 2:5, 6:9] += 1.0
    return s


def test_right_beats_random_beats_reversed():
    model, x = Planted(), planted_images()
    right = right_saliency()
    random = torch.rand(6, H, W, generator=torch.Generator().manual_seed(2))
    scores = {name: deletion_game(model, x, s, target=0, solver="torch")
              for name, s in [("right", right), ("random", random), ("reversed", -right)]}
    assert scores["right"].overall > scores["random"].overall + 0.2
    assert scores["random"].overall > scores["reversed"].overall + 0.2
    assert scores["right"].ins > scores["reversed"].ins and scores["right"].dele < scores["reversed"].dele


def test_curves_shapes_and_ends():
    model, x = Planted(), planted_images(3)
    result = deletion_game(model, x, right_saliency(3), target=[0, 0, 0])
    assert isinstance(result, GameResult)
    assert result.insertion.shape == result.deletion.shape == (3, 11)
    assert torch.allclose(result.ratios, torch.linspace(0, 1, 11, dtype=torch.float64))
    clean = torch.softmax(model(x), 1)[:, 0].double()
    assert torch.allclose(result.deletion[:, 0], clean, atol=1e-6)
    assert torch.allclose(result.insertion[:, -1], clean, atol=1e-6)
    assert result.overall == pytest.approx(result.ins - result.dele)
    per_image = result.insertion.mean(1) - result.deletion.mean(1)
    assert result.overall_se == pytest.approx(float(per_image.std() / math.sqrt(3)))
    assert result.target.tolist() == [0, 0, 0]


def test_exact_counts(monkeypatch):
    """floor(p H W) pixels removed (deletion) or kept (insertion), the top-ranked ones."""
    seen = []
    real = game_module.nli_impute

    def spy(images, keep, **kw):
        seen.append(keep.clone())
        return real(images, keep, **kw)
    monkeypatch.setattr(game_module, "nli_impute", spy)
    h, w = 7, 9
    x = torch.randn(1, 3, h, w)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, 4))
    sal = torch.rand(1, h, w)
    ratios = [0.0, 0.1, 0.3, 0.7, 1.0]
    deletion_game(model, x, sal, target=1, ratios=ratios, batch_size=100)
    keep = torch.cat(seen)
    assert keep.shape[0] == 2 * len(ratios)
    ranks = pixel_ranks(sal, (h, w))[0]
    for r, p in enumerate(ratios):
        n = math.floor(p * h * w)
        assert torch.equal(keep[r], ranks < n)
        assert torch.equal(keep[len(ratios) + r], ranks >= n)


def test_pixel_ranks_ties_and_resize():
    ranks = pixel_ranks(torch.zeros(1, 3, 4), (3, 4))
    assert ranks.flatten().tolist() == list(range(12))
    s = torch.tensor([[[0.0, 1.0, 1.0, 0.5]]])
    assert pixel_ranks(s, (1, 4)).flatten().tolist() == [3, 0, 1, 2]
    small = torch.rand(2, 4, 4)
    up = torch.nn.functional.interpolate(small[:, None], size=(8, 8), mode="bilinear",
                                         align_corners=False)[:, 0]
    assert torch.equal(pixel_ranks(small, (8, 8)), pixel_ranks(up, (8, 8)))
    with pytest.raises(ValueError):
        pixel_ranks(torch.full((1, 2, 2), float("nan")), (2, 2))


def test_batch_size_and_solver_do_not_change_scores():
    model, x = Planted(), planted_images(3)
    s = torch.rand(3, H, W, generator=torch.Generator().manual_seed(3))
    a = deletion_game(model, x, s, target=0, batch_size=5, solver="torch")
    b = deletion_game(model, x, s, target=0, batch_size=64, solver="scipy")
    assert torch.allclose(a.insertion, b.insertion, atol=1e-5)
    assert torch.allclose(a.deletion, b.deletion, atol=1e-5)
    c = deletion_game(model, x, s, target=0, seed=1)
    assert not torch.allclose(a.insertion, c.insertion, atol=1e-7)


def test_model_left_as_found():
    model = Planted().train()
    model.norm.eval()
    model.scale.requires_grad_(True)
    deletion_game(model, planted_images(2), right_saliency(2), target=None)
    assert model.training and not model.norm.training and model.scale.requires_grad


def test_rejects_bad_input():
    model, x = Planted(), planted_images(2)
    with pytest.raises(ValueError):
        deletion_game(model, x, right_saliency(3), target=0)
    with pytest.raises(ValueError):
        deletion_game(model, x, right_saliency(2), target=0, ratios=[0.5, 1.5])


BAD_GAMES = {
    "NaN images": (dict(images=planted_images(2).index_fill(2, torch.tensor([3]), float("nan"))),
                   "images contain NaN or Inf"),
    "empty batch": (dict(images=planted_images(2)[:0], saliency=right_saliency(2)[:0]), "empty batch"),
    "integer images": (dict(images=planted_images(2).long()), "images must be floating point"),
    "ratios=[]": (dict(ratios=[]), r"ratios must be a non-empty list of values in \[0, 1\], got \[\]"),
    "NaN ratio": (dict(ratios=[0.5, float("nan")]), r"got \[0.5, nan\]"),
    "batch_size=0": (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    "noise=-1": (dict(noise=-1.0), "noise must be a finite number >= 0"),
    "one-entry list target": (dict(target=[0]), "list of 1 entries for a batch of 2"),
    "tuple output": (dict(model=lambda m: nn.Sequential(m, TupleOut())), "got a tuple"),
}


class TupleOut(nn.Module):
    def forward(self, x):
        return (x,)


@pytest.mark.parametrize("name", BAD_GAMES)
def test_bad_input_raises_clearly_and_leaves_model_as_found(name):
    change, message = BAD_GAMES[name]
    model = Planted().train()
    model.scale.requires_grad_(False)
    args = dict(model=model, images=planted_images(2), saliency=right_saliency(2), target=0)
    args.update({k: v(model) if k == "model" else v for k, v in change.items()})
    with pytest.raises(ValueError, match=message):
        deletion_game(**args)
    assert model.training and not model.scale.requires_grad and model.scale.grad is None


def test_paired_gap_is_the_mean_and_se_of_per_image_differences():
    ratios = torch.linspace(0, 1, 3)
    a = GameResult(ratios, torch.tensor([[0.2, 0.6, 1.0], [0.1, 0.4, 0.7]]),
                   torch.tensor([[1.0, 0.5, 0.0], [0.9, 0.3, 0.0]]), torch.zeros(2, dtype=torch.long))
    b = GameResult(ratios, torch.full((2, 3), 0.5), torch.full((2, 3), 0.5), torch.zeros(2, dtype=torch.long))
    gaps = a.per_image_overall - b.per_image_overall                    # [0.1, 0.0]
    mean, se = a.paired_gap(b)
    assert abs(mean - 0.05) < 1e-6 and abs(se - float(gaps.std() / 2 ** 0.5)) < 1e-6
    assert b.paired_gap(b) == (0.0, 0.0)
    with pytest.raises(ValueError):
        a.paired_gap(GameResult(ratios, torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3, dtype=torch.long)))


def test_image_ids_key_the_noise_so_an_image_scores_the_same_in_any_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 5)).eval()
    images, saliency = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    batch = deletion_game(model, images, saliency, 1, image_ids=torch.tensor([7, 8, 9]))
    alone = deletion_game(model, images[1:2], saliency[1:2], 1, image_ids=[8])
    assert torch.equal(batch.insertion[1], alone.insertion[0])
    assert torch.equal(batch.deletion[1], alone.deletion[0])
    by_position = deletion_game(model, images[1:2], saliency[1:2], 1)      # noise of image id 0
    assert not torch.equal(by_position.deletion[0], alone.deletion[0])
    with pytest.raises(ValueError, match="image_ids must be 3 non-negative integers"):
        deletion_game(model, images, saliency, 1, image_ids=[1, 2])
    with pytest.raises(ValueError, match="image_ids"):
        deletion_game(model, images, saliency, 1, image_ids=[0, -1, 2])
