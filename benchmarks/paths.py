"""Where the benchmarks find data and trained models: one setting for every script.

A script's ``--shared DIR``, else the environment variable ``SAS_SHARED``, else ``../shared``
beside the repository. ``DIR/data/`` holds the test sets (``mnist``, ``cifar10``) and the ImageNet
photos (``imagenet_samples``), ``DIR/models/`` the paper's trained nets (the library's own model
specs read the same folder through ``SAS_FAST_MODELS_DIR`` or an explicit path).
"""
from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "SAS_SHARED"
REPO = Path(__file__).resolve().parents[1]


def shared_dir(given=None) -> Path:
    """The shared folder: ``given`` (a ``--shared`` value), ``$SAS_SHARED``, or ``../shared``."""
    if given:
        return Path(given)
    return Path(os.environ[SHARED_ENV]) if os.environ.get(SHARED_ENV) else REPO.parent / "shared"
