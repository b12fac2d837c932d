"""The learning-rate factors of ``lr_decay`` / ``lr_end`` and Adam's ``betas``, as the optimiser applies them."""
import math

import pytest
import torch

from sas_fast import ops
from sas_fast.config import make_config
from sas_fast.iteration import IterationRunner
from sas_fast.step import Objective
from test_attribute import TextureDetector, textured_images


def _rates(config):
    images = textured_images(1)
    pyramid = ops.blur_pyramid(images, config.levels, config.max_blur, backend="reference")
    runner = IterationRunner(torch.randn(1, 1, 36, 36).requires_grad_(True), pyramid,
                             Objective(TextureDetector().eval(), images, torch.zeros(1, dtype=torch.long)), config)
    rates = []
    for _ in range(config.iterations):
        rates.append(runner.optimizer.param_groups[0]["lr"])
        runner()
    return rates, runner.optimizer


@pytest.mark.parametrize("decay, expected", [
    ("none", [0.2] * 10),
    ("linear", [0.2 * (1 - i / 10) for i in range(10)]),
    ("cosine", [0.1 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]),
    # warm-up over round(10 / 10) = 1 iteration, then the cosine over the other 9
    ("warmup-cosine", [0.2] + [0.1 * (1 + math.cos(math.pi * (i - 1) / 9)) for i in range(1, 10)]),
])
def test_the_optimiser_steps_at_each_decays_rate(decay, expected):
    config = make_config("fast", iterations=10, lr=0.2, lr_decay=decay, num_masks=5, backend="reference",
                         window=5, max_blur=2.0)
    rates, _ = _rates(config)
    assert rates == pytest.approx(expected)


@pytest.mark.parametrize("decay, end, expected", [
    ("cosine", 0.5, [0.2 * (0.5 + 0.25 * (1 + math.cos(math.pi * i / 10))) for i in range(10)]),
    ("linear", 0.25, [0.2 * (0.25 + 0.75 * (1 - i / 10)) for i in range(10)]),
    ("warmup-cosine", 0.5, [0.2] + [0.2 * (0.5 + 0.25 * (1 + math.cos(math.pi * (i - 1) / 9)))
                                    for i in range(1, 10)]),
])
def test_a_decay_ends_at_lr_end(decay, end, expected):
    config = make_config("fast", iterations=10, lr=0.2, lr_decay=decay, lr_end=end, num_masks=5, backend="reference",
                         window=5, max_blur=2.0)
    rates, _ = _rates(config)
    assert rates == pytest.approx(expected)
    # the factor one step past the run is where the decay ends
    assert config.lr_factor(10) == pytest.approx(end)


def test_lr_end_zero_is_the_plain_decay_bit_for_bit():
    ended = make_config("paper-cifar", lr_decay="cosine", lr_end=0.0)
    plain = make_config("paper-cifar", lr_decay="cosine")
    assert [ended.lr_factor(i) for i in range(200)] == [0.5 * (1 + math.cos(math.pi * i / 200)) for i in range(200)]
    assert [ended.lr_factor(i) for i in range(200)] == [plain.lr_factor(i) for i in range(200)]


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), "0.5"])
def test_bad_lr_end_is_named(bad):
    with pytest.raises(ValueError, match=r"lr_end must be a number in \[0, 1\)"):
        make_config(lr_decay="cosine", lr_end=bad)


def test_lr_end_without_a_decay_is_refused():
    with pytest.raises(ValueError, match=r"lr_end=0.5 needs a decay: lr_decay one of \('cosine'"):
        make_config("paper-cifar", lr_end=0.5)


def test_the_warm_up_rises_linearly_then_decays():
    config = make_config(iterations=40, lr=1.0, lr_decay="warmup-cosine")
    factors = [config.lr_factor(i) for i in range(40)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(factors[3:], factors[4:])) and factors[-1] < 0.01


def test_betas_reach_adam_and_bad_betas_are_named():
    config = make_config("fast", iterations=2, num_masks=5, betas=[0.8, 0.99], backend="reference", window=5,
                         max_blur=2.0)
    assert config.betas == (0.8, 0.99)
    _, optimizer = _rates(config)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    for bad in [(0.9,), (0.9, 1.0), (-0.1, 0.9), "0.9"]:
        with pytest.raises(ValueError, match=r"betas must be two numbers in \[0, 1\)"):
            make_config(betas=bad)
    with pytest.raises(ValueError, match=r"unknown lr_decay 'step'; choose one of \('none', 'cosine', 'linear'"):
        make_config(lr_decay="step")
