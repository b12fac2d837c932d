"""The paper's small-image classifiers, ResNet8 and VGG16 (docs/SPEC.md section 6), with the exact
module layout of the trained state dicts (``shared/models/README.md``).

Both are one ``nn.Sequential``; input ``B x 3 x 32 x 32`` normalised as
:func:`sas_fast.models.data.load_npz_dataset` does, output ``B x num_classes`` logits.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ARCHS = ("resnet8", "vgg16")
DATASETS = ("cifar10", "mnist")


def cbr(cin: int, cout: int, k: int) -> nn.Sequential:
    """Conv (no bias, padding ``k // 2``) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """``x + b(a(x))`` with ``a = b = cbr(c, c, 3)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.a = cbr(channels, channels, 3)
        self.b = cbr(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class Scale(nn.Module):
    """Multiply by a constant (no parameters)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _conv_pool_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                         nn.BatchNorm2d(cout), nn.ReLU())


def resnet8(num_classes: int = 10) -> nn.Sequential:
    """The fast-CIFAR "ResNet8" (ReLU variant); its last residual block is ``model[6]``."""
    return nn.Sequential(
        nn.Conv2d(3, 27, 3, padding=1, bias=False), cbr(27, 64, 1), _conv_pool_bn(64, 128),
        Residual(128), _conv_pool_bn(128, 256), _conv_pool_bn(256, 512), Residual(512),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, num_classes, bias=False), Scale(0.125))


def vgg16_features() -> list:
    """The 31 feature layers of VGG-16: 13 conv 3x3 (padding 1) + ReLU, 5 max pools."""
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return layers


def vgg16(num_classes: int = 10) -> nn.Sequential:
    """CIFAR VGG-16 without batch norm: :func:`vgg16_features`, classifier 512-512-classes with
    dropout; its last conv is ``model[28]`` (ReLU ``model[29]``)."""
    return nn.Sequential(*vgg16_features(), nn.Flatten(), nn.Dropout(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Dropout(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, num_classes))


def load_paper_model(arch: str, dataset: str, models_dir) -> nn.Sequential:
    """Load a trained classifier from ``models_dir`` (the ``shared/models`` folder).

    ``{arch}_{dataset}.pt``, or its parts ``{arch}_{dataset}.part*.pt`` merged; float16
    tensors cast to float32; strict load; returned in eval mode on the CPU.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    models_dir = Path(models_dir)
    files = [models_dir / f"{arch}_{dataset}.pt"]
    if not files[0].exists():
        files = sorted(models_dir.glob(f"{arch}_{dataset}.part*.pt"))
    if not files:
        raise FileNotFoundError(f"no weights for {arch} / {dataset} in {models_dir}")
    state = {}
    for f in files:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    num_classes = state["9.weight" if arch == "resnet8" else "38.weight"].shape[0]
    model = (resnet8 if arch == "resnet8" else vgg16)(num_classes)
    model.load_state_dict(state, strict=True)
    return model.eval()
