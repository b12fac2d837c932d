"""CPU model calls in micro-batches sized by the model's measured activations, and the glibc malloc settings."""
import platform
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sas_fast import attribute, cpu_memory
from sas_fast.cpu_memory import (ACTIVATION_BUDGET, MMAP_THRESHOLD, PROBE_IMAGES, activation_bytes,
                                 default_max_batch, tune_malloc)
from sas_fast.step import Objective


class Copies(nn.Module):
    """``depth`` ReLUs, each on a fresh copy of its input: each saves one ``C x H x W`` output."""

    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth

    def forward(self, x):
        for _ in range(self.depth):
            x = torch.relu(x * 1.0)
        return x.mean((2, 3))


def _objective(model, images):
    return Objective(model, images, torch.zeros(images.shape[0], dtype=torch.long))


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("shape,dtype", [((1, 3, 224, 224), torch.float32), ((2, 3, 32, 32), torch.float64)])
def test_activation_bytes_counts_what_the_forward_saves_per_image(depth, shape, dtype):
    images = torch.rand(shape, dtype=dtype)
    one = images[0].numel() * images.element_size()      # one ReLU output of one image
    total, largest = activation_bytes(_objective(Copies(depth), images), images)
    assert largest == one
    assert 0 <= total - depth * one < 64                  # + the score's gather index (8 bytes a row)


@pytest.mark.parametrize("depth,size", [(1, 224), (40, 224), (1, 2000), (2, 32)])
def test_default_max_batch_keeps_each_activation_and_their_sum_under_the_limits(depth, size):
    images = torch.rand(1, 3, size, size)
    total, largest = activation_bytes(_objective(Copies(depth), images), images)
    batch = default_max_batch(_objective(Copies(depth), images), images)
    assert batch == max(1, min(ACTIVATION_BUDGET // total, MMAP_THRESHOLD // largest))
    assert batch == 1 or (batch * largest <= MMAP_THRESHOLD and batch * total <= ACTIVATION_BUDGET)


def test_default_max_batch_probes_once_per_model_shape_and_dtype():
    calls = []
    model = Copies(2)
    model.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape)))
    images = torch.rand(3, 3, 32, 32)
    first = default_max_batch(_objective(model, images), images)
    assert default_max_batch(_objective(model, images[:1]), images[:1]) == first
    assert calls == [(PROBE_IMAGES, 3, 32, 32)]
    default_max_batch(_objective(model, images.double()), images.double())
    default_max_batch(_objective(model, images[..., :16]), images[..., :16])
    assert calls[1:] == [(PROBE_IMAGES, 3, 32, 32), (PROBE_IMAGES, 3, 32, 16)]


def test_default_max_batch_elsewhere_is_all_at_once():
    assert default_max_batch(SimpleNamespace(), torch.empty(1, 3, 224, 224, device="meta")) is None


def test_cpu_run_calls_the_model_in_measured_micro_batches():
    calls = []
    model = Copies(20).eval()
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    images = torch.randn(1, 3, 224, 224)
    attribute(model, images, 0, preset="paper-cifar", iterations=1)     # 36 masked images
    total, largest = activation_bytes(_objective(Copies(20), images), images)
    chunk = min(ACTIVATION_BUDGET // total, MMAP_THRESHOLD // largest)
    assert 1 < chunk < 36
    assert calls == [1, PROBE_IMAGES] + [chunk] * (36 // chunk) + [36 % chunk] * (36 % chunk > 0)
    calls.clear()
    attribute(model, images, 0, preset="paper-cifar", iterations=1, max_batch=36)   # given: no probe, one call
    assert calls == [1, 36]


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_tuned", None)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(cpu_memory.MALLOC_ENV, raising=False)


def test_tune_malloc_respects_the_opt_out_and_the_users_tunables(fresh, monkeypatch):
    monkeypatch.setenv(cpu_memory.MALLOC_ENV, "0")
    assert tune_malloc() == "skipped: SAS_FAST_TUNE_MALLOC=0"
    monkeypatch.setattr(cpu_memory, "_tuned", None)
    monkeypatch.delenv(cpu_memory.MALLOC_ENV)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert tune_malloc().startswith("skipped: GLIBC_TUNABLES")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_applies_once_on_glibc(fresh, monkeypatch):
    assert tune_malloc() == "mmap threshold 32 MiB, trim threshold 256 MiB"
    monkeypatch.setenv(cpu_memory.MALLOC_ENV, "0")        # a second call changes nothing
    assert tune_malloc() == "mmap threshold 32 MiB, trim threshold 256 MiB"


def test_tune_malloc_skips_other_c_libraries(fresh, monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert tune_malloc() == "skipped: the C library is not glibc"
