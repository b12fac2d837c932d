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
