"""Image files as the models take them: one reader for ``sas-fast explain`` and the dataset
folder source. Every file becomes ``H x W x 3`` uint8 RGB at its full range: 8-bit modes through
Pillow's ``convert("RGB")`` (palette, greyscale, alpha dropped), 16-bit greyscale (PNG / TIFF
``I;16``, or ``I`` with values above 255) scaled by 255 / 65535 instead of saturated, float
greyscale (``F``) in [0, 1] scaled by 255; anything else is refused with ``ValueError``."""
from __future__ import annotations

import numpy as np

#: Pillow modes of 16-bit greyscale
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def read_rgb(path) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of the image file ``path``. Raises ``OSError`` for a file Pillow
    cannot read and ``ValueError`` for pixel values outside the range of their mode."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode not in SIXTEEN_BIT + ("I", "F"):
            return np.array(image.convert("RGB"))          # a writable copy
        values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0
    elif image.mode in SIXTEEN_BIT or values.max(initial=0) > 255:
        top = 65535.0
    else:
        top = 255.0
    if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > top:
        raise ValueError(f"{image.mode} pixel values must lie in [0, {top:g}], got "
                         f"[{values.min():g}, {values.max():g}]")
    grey = np.round(values * (255 / top)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
