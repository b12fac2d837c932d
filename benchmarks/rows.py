"""Results as data: every measurement is a row, appended to ``benchmarks/results/rows/<topic>.jsonl``
with what makes it reproducible (machine, versions, commit, command); ``render_results.py``
turns the latest rows of every topic into ``benchmarks/RESULTS.md``.

A row: ``setting`` (what was measured, e.g. "CIFAR-10 / ResNet8, N = 20"), ``metric`` (e.g.
"Overall, SaS"), ``value`` (a number or a short text such as "0.588 ± 0.017"), optional ``unit``,
and the provenance :func:`append` adds: ``machine``, ``torch``, ``triton``, ``commit``,
``command``. The latest row of each (setting, metric) is the one shown.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "rows"


@functools.cache
def machine() -> str:
    """The GPU's name, else the CPU's capability (``sas_fast.precision.cpu_capability``) and core count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    from sas_fast.precision import cpu_capability

    return f"CPU {platform.processor() or platform.machine()}, {cpu_capability()}, {os.cpu_count()} cores"


@functools.cache
def commit() -> str:
    """The checkout's commit (``+`` when it has uncommitted changes other than the appended rows
    themselves, so a series of commands run at one commit all name it), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        rows = [f":(exclude){RESULTS.relative_to(root)}"] if RESULTS.is_relative_to(root) else []
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *rows],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def _command() -> str:
    """This process's command line, a script of this package or a ``__main__`` written as ``python -m``."""
    script = Path(sys.argv[0]).resolve()
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    package = Path(__file__).resolve().parent
    if script.is_relative_to(package):
        module = ".".join(script.relative_to(package.parent).with_suffix("").parts)
    elif script.name == "__main__.py":
        module = script.parent.name
    else:
        return f"python {script.name} {args}".strip()
    return f"python -m {module} {args}".strip()


def append(topic: str, rows: list, command: str | None = None) -> Path:
    """Append ``rows`` (dicts with ``setting``, ``metric``, ``value``, optional ``unit``) to the
    topic's file, each with this process's machine, torch / triton versions, commit and command."""
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    provenance = {"machine": machine(), "torch": torch.__version__, "triton": triton_version,
                  "commit": commit(), "command": command or _command()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{topic}.jsonl"
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({**provenance, **row}) + "\n")
    return path
