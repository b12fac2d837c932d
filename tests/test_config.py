"""SaSConfig: size-dependent defaults and validation."""
import pytest

from sas_fast import make_config


@pytest.mark.parametrize("size, window", [(224, 41), (32, 5), (28, 5), (64, 11), (448, 83), (16, 3), (8, 3)])
def test_window_is_the_nearest_odd_integer_to_41_size_over_224(size, window):
    config = make_config().resolved(size, size + 7)
    assert config.window == window
    assert config.max_blur == pytest.approx(20 * size / 224)


def test_explicit_window_and_max_blur_are_kept():
    config = make_config(window=9, max_blur=1.5).resolved(32, 32)
    assert (config.window, config.max_blur) == (9, 1.5)


def test_unknown_option_and_even_window_raise():
    with pytest.raises(ValueError, match="unknown SaS option"):
        make_config(widow=5)
    with pytest.raises(ValueError, match="odd"):
        make_config(window=4)


def test_parse_option_reads_literals_and_keeps_strings():
    import argparse

    from sas_fast.config import parse_option
    assert parse_option("window=5") == ("window", 5)
    assert parse_option("max_blur=2.0") == ("max_blur", 2.0)
    assert parse_option("mode=insertion") == ("mode", "insertion")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_option("window")


@pytest.mark.parametrize("option, value, message", [
    ("window", 5.0, "window must be a positive odd integer or None, got 5.0"),
    ("window", True, "window must be a positive odd integer"),
    ("iterations", 2.5, "iterations must be an integer, got 2.5"),
    ("max_batch", 2.5, "max_batch must be an integer >= 1 or None, got 2.5"),
    ("levels", 2.5, "levels must be an integer, got 2.5"),
    ("seed", None, "seed must be an integer, got None"),
    ("num_masks", "5", "num_masks must be an integer, got '5'"),
    ("threshold_max_iter", 0, "threshold_max_iter must be >= 1"),
    ("trace_iterations", (0, 112), r"must be iterations of the run, integers in \[0, 111\], got \[112\]"),
    ("trace_iterations", (-1,), r"got \[-1\]"),
    ("trace_iterations", 5, "trace_iterations must be a tuple"),
    ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
    ("sharpness", float("inf"), "sharpness must be a finite number > 0, got inf"),
    ("beta", "1", "beta must be a finite number > 0"),
    ("max_blur", float("inf"), "max_blur must be a finite number >= 0 or None, got inf"),
    ("implicit_grad", 1, "implicit_grad must be True or False"),
])
def test_mistyped_or_non_finite_options_raise_naming_option_and_value(option, value, message):
    with pytest.raises(ValueError, match=message):
        make_config(**{option: value})




def test_numpy_integers_become_python_integers():
    import numpy as np

    config = make_config(window=np.int64(5), iterations=np.int32(3), trace_iterations=[np.int64(0), 2])
    assert type(config.window) is type(config.iterations) is int and config.trace_iterations == (0, 2)
    assert all(type(i) is int for i in config.trace_iterations)
