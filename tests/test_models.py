"""The paper's ResNet8 / VGG16 and the offline test sets (``shared/``: set SAS_SHARED, or the
``../shared`` folder beside the repository)."""
import json

import numpy as np
import pytest
import torch

from benchmarks.paths import shared_dir
from sas_fast.models import load_npz_dataset, load_paper_model, resnet8, stratified_indices, vgg16

SHARED = shared_dir()
MODELS, DATA = SHARED / "models", SHARED / "data"
needs_models = pytest.mark.skipif(not (MODELS / "state_dict_keys.json").exists(),
                                  reason=f"no trained models at {MODELS} (set SAS_SHARED)")
needs_data = pytest.mark.skipif(not (DATA / "cifar10" / "test.npz").exists(),
                                reason=f"no datasets at {DATA} (set SAS_SHARED)")


@needs_models
@pytest.mark.parametrize("arch,build", [("resnet8", resnet8), ("vgg16", vgg16)])
def test_layout_matches_state_dict_keys(arch, build):
    keys = json.loads((MODELS / "state_dict_keys.json").read_text())
    expected = {}
    for name, shapes in keys.items():
        if name.startswith(f"{arch}_cifar10"):
            expected.update(shapes)
    got = {k: list(v.shape) for k, v in build(10).state_dict().items()}
    assert got == expected


def test_forward_shapes():
    x = torch.randn(2, 3, 32, 32)
    assert resnet8(7).eval()(x).shape == (2, 7)
    assert vgg16(5).eval()(x).shape == (2, 5)


def test_stratified_indices():
    labels = np.repeat(np.arange(10), 50)
    idx = stratified_indices(labels, 25)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [3] * 5 + [2] * 5
    assert np.array_equal(idx, stratified_indices(labels, 25)) and np.all(np.diff(idx) > 0)
    even, odd = stratified_indices(labels, 100, (2, 1)), stratified_indices(labels, 100, (2, 0))
    assert np.all(even % 2 == 0) and np.all(odd % 2 == 1)
    assert np.bincount(labels[even], minlength=10).tolist() == [10] * 10
    with pytest.raises(ValueError):
        stratified_indices(labels, 1000)
    more = stratified_indices(labels, 20, (2, 1), exclude=even[:50])    # drawing more images
    assert not set(more) & set(even[:50]) and np.all(more % 2 == 0)
    assert np.bincount(labels[more], minlength=10).tolist() == [2] * 10


@needs_data
def test_normalisation():
    x, y = load_npz_dataset("cifar10", DATA, np.arange(0, 10000, 10))
    assert x.shape == (1000, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    assert bool((mean.abs() < 0.05).all()) and bool(((std - 1).abs() < 0.05).all())
    m, _ = load_npz_dataset("mnist", DATA, [0, 1])
    assert m.shape == (2, 3, 32, 32) and torch.equal(m[:, 0], m[:, 2])
    assert float(m.min()) == -1.0 and float(m.max()) <= 1.0 and float(m[0, 0, 0, 0]) == -1.0


@needs_models
@needs_data
@pytest.mark.parametrize("arch,dataset,floor", [("resnet8", "cifar10", 0.85), ("resnet8", "mnist", 0.95),
                                                ("vgg16", "cifar10", 0.85), ("vgg16", "mnist", 0.95)])
def test_paper_models_accuracy(arch, dataset, floor):
    model = load_paper_model(arch, dataset, MODELS)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    labels = load_npz_dataset(dataset, DATA)[1]
    x, y = load_npz_dataset(dataset, DATA, stratified_indices(labels, 200))
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > floor, f"{arch} / {dataset}: {accuracy:.3f}"


@needs_models
def test_load_errors():
    with pytest.raises(ValueError):
        load_paper_model("resnet50", "cifar10", MODELS)
    with pytest.raises(FileNotFoundError):
        load_paper_model("resnet8", "cifar100", MODELS)
