"""CPU model calls in micro-batches of about 4 MiB of masked images, and the glibc malloc settings."""
import platform

import pytest
import torch
from torch import nn

from sas_fast import attribute, cpu_memory
from sas_fast.cpu_memory import default_max_batch, tune_malloc


@pytest.mark.parametrize("shape,dtype,expected", [((1, 3, 224, 224), torch.float32, 6),
                                                  ((16, 3, 224, 224), torch.float32, 6),
                                                  ((1, 3, 224, 224), torch.float64, 3),
                                                  ((1, 3, 32, 32), torch.float32, 341),
                                                  ((1, 3, 2000, 2000), torch.float32, 1)])
def test_default_max_batch_on_cpu(shape, dtype, expected):
    assert default_max_batch(torch.empty(shape, dtype=dtype)) == expected


def test_default_max_batch_elsewhere_is_all_at_once():
    assert default_max_batch(torch.empty(1, 3, 224, 224, device="meta")) is None


def test_cpu_run_calls_the_model_in_default_micro_batches():
    calls = []
    model = nn.Sequential(nn.Conv2d(3, 2, 3, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    attribute(model, torch.randn(1, 3, 224, 224), 0, iterations=1)
    assert calls == [1] + [6] * 6                     # the clean image, then 36 masked images
    calls.clear()
    attribute(model, torch.randn(1, 3, 224, 224), 0, iterations=1, max_batch=36)
    assert calls == [1, 36]


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_tuned", None)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(cpu_memory.OPT_OUT, raising=False)


def test_tune_malloc_respects_the_opt_out_and_the_users_tunables(fresh, monkeypatch):
    monkeypatch.setenv(cpu_memory.OPT_OUT, "0")
    assert tune_malloc() == "skipped: SAS_FAST_TUNE_MALLOC=0"
    monkeypatch.setattr(cpu_memory, "_tuned", None)
    monkeypatch.delenv(cpu_memory.OPT_OUT)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert tune_malloc().startswith("skipped: GLIBC_TUNABLES")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_applies_once_on_glibc(fresh, monkeypatch):
    assert tune_malloc() == "mmap threshold 32 MiB, trim threshold 256 MiB"
    monkeypatch.setenv(cpu_memory.OPT_OUT, "0")        # a second call changes nothing
    assert tune_malloc() == "mmap threshold 32 MiB, trim threshold 256 MiB"


def test_tune_malloc_skips_other_c_libraries(fresh, monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert tune_malloc() == "skipped: the C library is not glibc"
