"""The offline test sets (``shared/data``: ``{dataset}/{split}.npz`` with uint8 ``images`` and
int64 ``labels``), normalised exactly as the paper's models expect (``shared/models/README.md``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CIFAR10_MEAN = (125.31 / 255, 122.95 / 255, 113.87 / 255)
CIFAR10_STD = (62.99 / 255, 62.09 / 255, 66.70 / 255)


def normalise(images: np.ndarray, dataset: str) -> torch.Tensor:
    """uint8 images -> model input ``B x 3 x 32 x 32`` float32.

    - ``"cifar10"``: ``N x 32 x 32 x 3`` -> channels first, ``(x / 255 - mean) / std``.
    - ``"mnist"``: ``N x 28 x 28`` -> ``x / 255``, bilinear resize to 32 x 32
      (``antialias=True, align_corners=False``), 3 channels, ``(x - 0.5) / 0.5``.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255
    if dataset == "cifar10":
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        return (x.permute(0, 3, 1, 2) - mean) / std
    if dataset == "mnist":
        x = F.interpolate(x[:, None], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return (x.expand(-1, 3, -1, -1) - 0.5) / 0.5
    raise ValueError(f"dataset must be 'cifar10' or 'mnist', got {dataset!r}")


def load_npz_dataset(dataset: str, data_dir, indices=None, split: str = "test"):
    """``(images B x 3 x 32 x 32 float32 normalised, labels LongTensor[B])`` from
    ``data_dir/{dataset}/{split}.npz``; ``indices`` selects images (default: all)."""
    with np.load(Path(data_dir) / dataset / f"{split}.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        images, labels = images[indices], labels[indices]
    return normalise(images, dataset).contiguous(), torch.from_numpy(np.asarray(labels, dtype=np.int64))


def stratified_indices(labels, n: int, exclude_mod=None, exclude=()) -> np.ndarray:
    """``n`` dataset indices stratified by class, deterministic, sorted.

    Each of the ``C`` classes gets ``n // C`` images, the first ``n % C`` classes one more;
    within a class they are evenly spaced over its images in index order.
    ``exclude_mod``: ``m`` or ``(m, r)`` drops indices ``i`` with ``i % m == r`` (``r = 0``
    by default) before choosing, e.g. to keep calibration and evaluation images apart;
    ``exclude``: indices dropped too (e.g. images already chosen, to draw more).
    """
    labels = np.asarray(labels)
    candidates = np.arange(labels.size)
    if exclude_mod is not None:
        m, r = (exclude_mod, 0) if np.isscalar(exclude_mod) else exclude_mod
        candidates = candidates[candidates % m != r]
    candidates = np.setdiff1d(candidates, np.asarray(exclude, dtype=np.int64))
    classes = np.unique(labels)
    chosen = []
    for k, cls in enumerate(classes):
        pool = candidates[labels[candidates] == cls]
        take = n // classes.size + (k < n % classes.size)
        if take > pool.size:
            raise ValueError(f"class {cls} has {pool.size} candidate images, {take} requested")
        chosen.append(pool[(np.arange(take) * pool.size) // take])
    return np.sort(np.concatenate(chosen))
