"""One image reader for `sas-fast explain` and the dataset folder source: every mode at its
full range (16-bit greyscale scaled, not saturated), the same array through both loaders."""
import numpy as np
import pytest
from PIL import Image

from sas_fast.cli import _load_photo
from sas_fast.dataset.sources import open_source
from sas_fast.images import read_rgb

RAMP16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(3, axis=0)
RGB = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)


def _files(folder):
    """``{file name: expected H x W x 3 uint8}`` of one image per mode."""
    grey16 = np.round(RAMP16 / 65535 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    Image.fromarray(RAMP16).save(folder / "grey16.png")
    Image.fromarray(RAMP16).save(folder / "grey16.tif")
    Image.fromarray(RAMP16.astype(np.int32), mode="I").save(folder / "grey32.tif")
    Image.fromarray(RGB).save(folder / "rgb.png")
    Image.fromarray(RGB[..., 0]).save(folder / "grey8.png")
    rgba = np.concatenate([RGB, np.full((5, 4, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=256).save(folder / "palette.png")
    ramp = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(ramp, mode="F").save(folder / "float.tif")
    return {"grey16.png": grey16, "grey16.tif": grey16, "grey32.tif": grey16, "rgb.png": RGB,
            "grey8.png": RGB[..., :1].repeat(3, -1), "rgba.png": RGB,
            "palette.png": np.asarray(Image.open(folder / "palette.png").convert("RGB")),
            "float.tif": np.array([[0, 64, 128, 255]], np.uint8)[..., None].repeat(3, -1)}


def test_every_mode_reads_at_its_full_range_through_both_loaders(tmp_path):
    expected = _files(tmp_path)
    source = open_source(tmp_path)
    assert sorted(source.names) == sorted(expected)
    for index, name in enumerate(source.names):
        image = read_rgb(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == expected[name].shape, name
        assert np.array_equal(image, expected[name]), name
        assert np.array_equal(_load_photo(str(tmp_path / name)), image)
        assert np.array_equal(source.load(index), image)
    assert read_rgb(tmp_path / "grey16.png")[0, 2, 0] == 128          # 32768 of 65535, not white


def test_out_of_range_float_images_and_unreadable_files_are_refused(tmp_path):
    Image.fromarray(np.array([[0.0, 2.0]], dtype=np.float32), mode="F").save(tmp_path / "bright.tif")
    with pytest.raises(ValueError, match=r"F pixel values must lie in \[0, 1\]"):
        read_rgb(tmp_path / "bright.tif")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        _load_photo(str(tmp_path / "broken.png"))
