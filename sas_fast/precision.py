"""``precision="auto"``: the model runs under bf16 autocast only where the hardware computes bf16
natively, in fp32 everywhere else, and the choice comes with its reason.

Native bf16 means:

- CUDA: compute capability >= 8.0 (Ampere and later; ROCm devices all have it);
- x86 CPU: the AVX512-BF16 or AMX-BF16 instructions (:func:`torch.cpu.get_capabilities`), with
  ATen's kernels dispatched to AVX-512 (not capped by ``ATEN_CPU_CAPABILITY``) and oneDNN allowed
  to use bf16 (not capped by ``ONEDNN_MAX_CPU_ISA``). A CPU without them emulates bf16: 38 s per demo
  iteration against 2-3.4 s in fp32 on a 2-core AVX2 CPU (AMD EPYC), so it gets fp32; ``"bf16"`` asked for
  there still runs bf16 (to match results computed in bf16 elsewhere), with a warning that says why
  it is slow;
- any other device: never.

Only float32 images are candidates: float64 images ask for double precision, and float16 /
bfloat16 images come with a model already converted to that dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .checks import warn_caller


class Precision(NamedTuple):
    """A resolved model precision, ``"fp32"`` or ``"bf16"``, and why it was chosen."""

    precision: str
    reason: str


def cpu_bf16_reason() -> str | None:
    """None if this CPU computes bf16 natively (see the module docstring), else why not."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    hardware = [name for name in ("avx512_bf16", "amx_bf16") if caps.get(name)]
    if not caps:   # torch < 2.13 has no capability map; the AVX512-BF16 query exists since 2.3
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        hardware = ["avx512_bf16"] if check is not None and check() else []
    if not hardware:
        return "the CPU has neither AVX512-BF16 nor AMX-BF16 (bf16 would be emulated)"
    dispatch = torch.backends.cpu.get_cpu_capability()
    if not dispatch.startswith("AVX512"):
        return f"the CPU has {'/'.join(hardware)} but ATen's kernels run at {dispatch}"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return f"the CPU has {'/'.join(hardware)} but oneDNN may not use bf16"
    return None


def resolve_precision(precision: str, device: torch.device | str,
                      dtype: torch.dtype = torch.float32) -> Precision:
    """``"fp32"`` / ``"bf16"`` as given (bf16 on a CPU that emulates it with a warning);
    ``"auto"`` -> bf16 where ``device`` runs it natively and the images (of ``dtype``) are
    float32, else fp32."""
    device = torch.device(device)
    if precision != "auto":
        why_not = cpu_bf16_reason() if precision == "bf16" and device.type == "cpu" else None
        if why_not is None:
            return Precision(precision, "requested")
        warn_caller(f"precision='bf16' on this CPU is emulated ({why_not}): about ten times slower than "
                    "'fp32' (38 s against 2-3.4 s per demo iteration on a 2-core AVX2 CPU); "
                    "precision='auto' picks fp32 here")
        return Precision("bf16", f"requested; emulated: {why_not}")
    if dtype != torch.float32:
        return Precision("fp32", f"{dtype} images: the model runs in their dtype")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        if torch.version.hip or major >= 8:
            return Precision("bf16", f"CUDA device {index} computes bf16 natively")
        return Precision("fp32", f"CUDA device {index} (compute capability {major}.{minor}) "
                                 f"has no native bf16")
    if device.type == "cpu":
        why_not = cpu_bf16_reason()
        if why_not is None:
            return Precision("bf16", f"the CPU computes bf16 natively "
                                     f"({torch.backends.cpu.get_cpu_capability()}, AVX512-BF16/AMX)")
        return Precision("fp32", why_not)
    return Precision("fp32", f"no native bf16 known for device type {device.type!r}")


def cpu_capability() -> str:
    """What a CPU benchmark figure depends on: ATen's dispatch level (``"AVX2"``, ``"AVX512"``,
    after ``ATEN_CPU_CAPABILITY``) and the native bf16 units, e.g. ``"AVX512 +AVX512-BF16 +AMX-BF16"``."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    units = [label for name, label in (("avx512_bf16", "+AVX512-BF16"), ("amx_bf16", "+AMX-BF16"))
             if caps.get(name)]
    return " ".join([torch.backends.cpu.get_cpu_capability(), *units])
