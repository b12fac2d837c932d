"""Pictures people can look at: heat-map overlays (needs matplotlib, in the ``eval``/``demo`` extras)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_saliency(saliency: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``H x W`` (or ``B x H x W``) saliency to ``height x width``."""
    s = saliency.detach().float().cpu()
    squeeze = s.dim() == 2
    s = F.interpolate(s.reshape(-1, 1, *s.shape[-2:]), size=(height, width), mode="bilinear",
                      align_corners=False)[:, 0]
    return s[0] if squeeze else s


def overlay(image: np.ndarray, saliency, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``H x W x 3`` image in [0, 1] (or uint8) blended with a colour-mapped ``h x w`` saliency in
    [0, 1], resized to the image: ``(1 - alpha) image + alpha cmap(saliency)``, uint8 ``H x W x 3``."""
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    sal = resize_saliency(torch.as_tensor(np.asarray(saliency)), *img.shape[:2]).numpy()
    heat = colormaps[cmap](np.clip(sal, 0, 1))[..., :3]
    return (255 * np.clip((1 - alpha) * img[..., :3] + alpha * heat, 0, 1)).round().astype(np.uint8)


def save_png(path, rgb: np.ndarray) -> None:
    """Write an ``H x W x 3`` uint8 array as a PNG of exactly that size."""
    import matplotlib.image

    matplotlib.image.imsave(str(path), rgb)
