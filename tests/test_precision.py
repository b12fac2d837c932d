"""``precision="auto"``: bf16 exactly where the device computes it natively, with the CPU and
CUDA capability queries mocked."""
import warnings

import pytest
import torch
from torch import nn

from sas_fast import attribute
from sas_fast.config import SaSConfig
from sas_fast.precision import cpu_capability, resolve_precision

AVX2_ONLY = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False,
             "amx_bf16": False, "amx_tile": False}
AVX512_NO_BF16 = {**AVX2_ONLY, "avx512_f": True, "avx512_bw": True}
AVX512_BF16 = {**AVX512_NO_BF16, "avx512_bf16": True}
AMX = {**AVX512_NO_BF16, "amx_bf16": True, "amx_tile": True}


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(capabilities, dispatch="AVX512", onednn_bf16=True)`` mocks what torch reports."""
    def mock(capabilities, dispatch="AVX512", onednn_bf16=True):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: dispatch)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    return mock


def test_default_is_auto():
    assert SaSConfig().precision == "auto"


@pytest.mark.parametrize("caps", [AVX512_BF16, AMX])
def test_cpu_with_native_bf16_gets_bf16(cpu, caps):
    cpu(caps)
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == "bf16" and "natively" in choice.reason


@pytest.mark.parametrize("caps,dispatch,onednn,why", [
    (AVX2_ONLY, "AVX2", False, "neither AVX512-BF16 nor AMX-BF16"),
    (AVX512_NO_BF16, "AVX512", True, "neither AVX512-BF16 nor AMX-BF16"),   # oneDNN would emulate
    (AVX512_BF16, "AVX2", True, "ATen's kernels run at AVX2"),              # ATEN_CPU_CAPABILITY=avx2
    (AMX, "AVX512", False, "oneDNN may not use bf16"),                      # ONEDNN_MAX_CPU_ISA=AVX2
])
def test_cpu_without_native_bf16_gets_fp32(cpu, caps, dispatch, onednn, why):
    cpu(caps, dispatch, onednn)
    choice = resolve_precision("auto", torch.device("cpu"))
    assert choice.precision == "fp32" and why in choice.reason


def test_torch_without_capability_map_asks_for_avx512_bf16(cpu, monkeypatch):
    cpu({})
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cpu").precision == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu").precision == "bf16"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_only_float32_images_get_bf16(cpu, dtype):
    cpu(AMX)
    choice = resolve_precision("auto", "cpu", dtype)
    assert choice.precision == "fp32" and str(dtype) in choice.reason


@pytest.mark.parametrize("capability,hip,expected", [((8, 0), None, "bf16"), ((9, 0), None, "bf16"),
                                                     ((7, 5), None, "fp32"), ((6, 0), "6.2", "bf16")])
def test_cuda_needs_compute_capability_8(monkeypatch, capability, hip, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert resolve_precision("auto", "cuda:0").precision == expected


def test_other_devices_and_explicit_choices(cpu):
    cpu(AVX2_ONLY, "AVX2", False)
    assert resolve_precision("auto", "mps").precision == "fp32"
    with pytest.warns(UserWarning, match="emulated.*neither AVX512-BF16 nor AMX-BF16"):
        choice = resolve_precision("bf16", "cpu")                   # asked for: emulated, but said so
    assert choice.precision == "bf16" and choice.reason.startswith("requested; emulated")
    cpu(AMX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cpu") == ("bf16", "requested")
        assert resolve_precision("fp32", "cpu") == ("fp32", "requested")


def test_the_emulation_warning_points_at_the_callers_line(cpu):
    cpu(AVX2_ONLY, "AVX2", False)
    with pytest.warns(UserWarning, match="emulated") as record:
        attribute(AutocastProbe().eval(), torch.randn(1, 3, 8, 8), 0, iterations=1, window=3, precision="bf16")
    assert [r.filename for r in record if "emulated" in str(r.message)] == [__file__]


class AutocastProbe(nn.Module):
    """Records whether each forward ran under CPU bf16 autocast."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return self.head(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("caps,dispatch,onednn,autocast", [(AVX2_ONLY, "AVX2", False, False),
                                                           (AVX512_BF16, "AVX2", True, False),
                                                           (AMX, "AVX512", True, True)])
def test_attribute_default_runs_the_model_as_resolved(cpu, caps, dispatch, onednn, autocast):
    cpu(caps, dispatch, onednn)
    model = AutocastProbe().eval()
    attribute(model, torch.randn(1, 3, 16, 16), 0, iterations=2, window=3, max_batch=64)   # one call per step, no probe
    steps = model.seen[1:]                        # the first forward is the clean image's
    assert len(steps) == 2 and all(s == autocast for s in steps)


def test_cpu_capability_names_the_dispatch_level_and_the_bf16_units(cpu):
    cpu(AMX, "AVX512")
    assert cpu_capability() == "AVX512 +AMX-BF16"
    cpu(AVX512_BF16, "AVX2")
    assert cpu_capability() == "AVX2 +AVX512-BF16"
    cpu(AVX2_ONLY, "AVX2")
    assert cpu_capability() == "AVX2"
