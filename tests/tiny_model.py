"""A tiny seeded classifier for the dataset-run tests: ``tiny_model:make`` as a model spec."""
import numpy as np
import torch
from torch import nn


def preprocess(image: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x 3`` (or ``H x W``) -> ``3 x H x W`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().div(255)
    x = x[None].expand(3, -1, -1) if x.dim() == 2 else x.permute(2, 0, 1)
    return (x - 0.5) / 0.5


def make():
    """(model, preprocess): conv 3->4, ReLU, global average pool, linear 4->3; fixed weights."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.eval(), preprocess


def make_tuple_output():
    """:func:`make`'s model returning ``(logits,)``: a bad model spec for SaS."""
    model, preprocess = make()
    return nn.Sequential(model, _Tuple()).eval(), preprocess


class _Tuple(nn.Module):
    def forward(self, x):
        return (x,)
