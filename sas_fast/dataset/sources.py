"""Where the images of a dataset run come from: a folder of image files or an npz archive.

Both give ``len(source)`` images addressed by a dataset index, each read on demand as a
``uint8`` array (``H x W x 3`` RGB from a folder; ``H x W`` or ``H x W x C`` as stored in an
npz). A folder's index order is the sorted list of its image files' relative paths
(sub-folders included), so every process of a run sees the same order.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from .errors import DatasetRunError

#: file name endings read as images from a folder (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class UnreadableImage(Exception):
    """An image file that PIL cannot decode; the run skips it and lists it in the manifest."""


class FolderSource:
    """The image files under ``root`` (recursive), decoded with PIL as RGB; no labels."""

    kind = "folder"
    labels = None

    def __init__(self, root: Path):
        self.root = root
        self.names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.names:
            raise DatasetRunError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {root}")

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]

    def fingerprint(self) -> str:
        """sha256 of the file list: a restart must see the same images in the same order."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    def load(self, index: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.root / self.names[index]) as image:
                return np.array(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise UnreadableImage(f"{type(err).__name__}: {err}") from err


class NpzSource:
    """An npz archive with ``images`` (uint8, ``N x H x W`` or ``N x H x W x C``) and
    optionally ``labels`` (N integer classes), as in ``/work/shared/data``."""

    kind = "npz"

    def __init__(self, path: Path):
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "images" not in archive.files:
                    raise DatasetRunError(f"{path} has no 'images' array (it has {archive.files})")
                self.images = archive["images"]
                self.labels = archive["labels"] if "labels" in archive.files else None
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise DatasetRunError(f"cannot read npz archive {path}: {err}") from err
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4) or len(self.images) == 0:
            raise DatasetRunError(f"{path}: 'images' must be a non-empty uint8 array N x H x W or "
                                  f"N x H x W x C, got {self.images.dtype} {self.images.shape}")
        if self.labels is not None:
            if self.labels.ndim != 1 or not np.issubdtype(self.labels.dtype, np.integer):
                raise DatasetRunError(f"{path}: 'labels' must be a 1-D integer array, got "
                                      f"{self.labels.dtype} {self.labels.shape}")
            if len(self.labels) != len(self.images):
                raise DatasetRunError(f"{path}: {len(self.labels)} labels for {len(self.images)} images")
            self.labels = self.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return str(index)

    def fingerprint(self) -> str:
        """sha256 of the archive file."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


def open_source(src) -> FolderSource | NpzSource:
    """The source at ``src``: a folder of images or an ``.npz`` file; clear errors otherwise."""
    path = Path(src).expanduser().resolve()
    if not path.exists():
        raise DatasetRunError(f"image source {src} does not exist")
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() == ".npz":
        return NpzSource(path)
    raise DatasetRunError(f"image source {src} is neither a folder of images nor an .npz archive")


def describe(source) -> dict:
    """The source's identity, as recorded in the manifest."""
    return {"kind": source.kind, "path": str(source.root if source.kind == "folder" else source.path),
            "count": len(source), "labels": source.labels is not None,
            "fingerprint": source.fingerprint()}
