"""The coarse phase: the pre-mask's gradient averaged over pixel tiles in the first iterations."""
import pytest
import torch

from sas_fast import attribute, ops
from sas_fast.config import make_config
from sas_fast.iteration import IterationRunner, block_mean
from sas_fast.step import Objective
from test_attribute import TextureDetector, textured_images

OPTIONS = dict(preset="paper-cifar", iterations=6, num_masks=5, backend="reference", precision="fp32",
               window=5, max_blur=2.0, lr=0.2)


@pytest.mark.parametrize("shape, block", [((2, 1, 8, 12), 4), ((1, 1, 7, 10), 3), ((3, 2, 5, 5), 1),
                                          ((1, 1, 4, 6), 9)])
def test_block_mean_is_each_tiles_mean(shape, block):
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.empty_like(grad)
    for top in range(0, shape[-2], block):          # tiles cut by the border keep only their pixels
        for left in range(0, shape[-1], block):
            tile = (..., slice(top, top + block), slice(left, left + block))
            expected[tile] = grad[tile].mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(block_mean(grad, block), expected, atol=1e-14, rtol=0)


def test_adam_on_block_means_is_adam_on_a_coarse_offset():
    """The docstring's claim on a toy loss: the pre-mask's path under Adam with the tile-averaged
    gradient is the path of ``start + Q`` (Q repeated over 3 x 3 tiles) under Adam on Q."""
    g = torch.Generator().manual_seed(2)
    start, target = torch.randn(1, 1, 9, 12, dtype=torch.float64, generator=g), torch.randn(9, 12, generator=g)

    def loss(premask):
        return ((premask.squeeze() - target.double()) ** 4).sum() + premask.sin().sum()

    premask = start.clone().requires_grad_(True)
    fine = torch.optim.Adam([premask], lr=0.05, eps=1e-12)
    offset = torch.zeros(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    coarse = torch.optim.Adam([offset], lr=0.05, eps=1e-12)
    for _ in range(20):
        fine.zero_grad()
        loss(premask).backward()
        premask.grad = block_mean(premask.grad, 3)
        fine.step()
        coarse.zero_grad()
        loss(start + offset.repeat_interleave(3, -2).repeat_interleave(3, -1)).backward()
        coarse.step()
    moved = start + offset.detach().repeat_interleave(3, -2).repeat_interleave(3, -1)
    assert (moved - start).abs().max() > 0.1
    torch.testing.assert_close(premask.detach(), moved, atol=1e-10, rtol=0)


def test_the_pre_mask_moves_in_tiles_during_the_coarse_phase_only():
    images, target = textured_images(2), torch.zeros(2, dtype=torch.long)
    config = make_config(**OPTIONS, coarse_block=4, coarse_fraction=0.5)
    assert config.coarse_iterations() == 3
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend="reference")
    start = torch.randn(2, 1, 36, 36, generator=torch.Generator().manual_seed(0))
    premask = start.clone().requires_grad_(True)
    runner = IterationRunner(premask, pyramid, Objective(TextureDetector().eval(), images, target), config)
    for _ in range(3):
        runner()
    moved = premask.detach() - start
    assert moved.abs().max() > 0.05
    torch.testing.assert_close(moved, block_mean(moved, 4), atol=1e-6, rtol=0)    # constant per 4 x 4 tile
    for _ in range(3):
        runner()
    moved = premask.detach() - start
    assert (moved - block_mean(moved, 4)).abs().max() > 1e-3


def test_the_coarse_phase_changes_the_map_not_the_passes():
    images, target = textured_images(2), torch.zeros(2, dtype=torch.long)
    model = TextureDetector().eval()
    coarse, trace = attribute(model, images, target, coarse_block=4, coarse_fraction=0.5, return_trace=True,
                              progress=False, **OPTIONS)
    plain, plain_trace = attribute(model, images, target, return_trace=True, progress=False, **OPTIONS)
    assert (coarse - plain).abs().max() > 1e-3
    assert trace.passes.tolist() == plain_trace.passes.tolist() == [6 * 6] * 2
    same = attribute(model, images, target, coarse_block=4, coarse_fraction=0.0, progress=False, **OPTIONS)
    torch.testing.assert_close(same, plain, atol=0, rtol=0)


def test_no_coarse_phase_by_default_and_bad_values_are_named():
    assert make_config("paper-cifar").coarse_iterations() == 0
    assert make_config("paper-cifar", coarse_fraction=0.5).coarse_iterations() == 0     # block 1: no phase
    assert make_config("paper-cifar", iterations=112, coarse_block=4, coarse_fraction=0.25).coarse_iterations() == 28
    for bad in (0, -2, 2.5, "4"):
        with pytest.raises(ValueError, match="coarse_block must be"):
            make_config("paper-cifar", coarse_block=bad)
    for bad in (-0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match=r"coarse_fraction must be a number in \[0, 1\]"):
            make_config("paper-cifar", coarse_fraction=bad)
    with pytest.raises(ValueError, match="cuda_graph=True .* needs no coarse phase"):
        make_config("paper-cifar", coarse_block=4, coarse_fraction=0.5, cuda_graph=True)
