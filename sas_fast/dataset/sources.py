"""Where the images of a dataset run come from: a folder of image files or an npz archive.

Both give ``len(source)`` images addressed by a dataset index, each read on demand as a
``uint8`` array (``H x W x 3`` RGB from a folder; ``H x W`` or ``H x W x C`` as stored in an
npz). A folder's index order is the sorted list of its image files' relative paths
(sub-folders included), so every process of a run sees the same order.

A folder has labels in one of two layouts (an ImageNet-style set):

- ``labels.csv`` in the folder, with the columns ``file`` (path relative to the folder, or to
  its ``images/`` sub-folder) and ``class_index`` (other columns, e.g. ``wnid`` and ``name``,
  are ignored): only the files it lists are read;
- the ImageFolder layout, every image in a sub-folder named by its WordNet id
  (``n01440764/xxx.JPEG``): class index = position of the WNID among the sorted sub-folder
  names (torchvision's ``ImageFolder`` order; right for ImageNet-1k when all 1,000 are there).
"""
from __future__ import annotations

import csv
import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np

from ..checks import warn_caller
from ..images import read_rgb
from .errors import DatasetRunError

#: file name endings read as images from a folder (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: the labels file of a labelled folder, and its two required columns
LABELS_CSV, FILE_COLUMN, CLASS_COLUMN = "labels.csv", "file", "class_index"
#: a WordNet id, the name of an ImageFolder class sub-folder
WNID = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000


class UnreadableImage(Exception):
    """An image file that PIL cannot decode; the run skips it and lists it in the manifest."""


class FolderSource:
    """The image files under ``root`` (recursive), decoded with PIL as RGB; labels from a
    ``labels.csv`` or the ImageFolder layout (see the module docstring), else none."""

    kind = "folder"

    def __init__(self, root: Path):
        self.root = root
        self.labels, self.layout = None, "plain"
        if (root / LABELS_CSV).is_file():
            self.names, self.labels = _read_labels_csv(root)
            self.layout = LABELS_CSV
            return
        self.names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.names:
            raise DatasetRunError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {root}")
        classes = sorted({name.split("/")[0] for name in self.names if "/" in name})
        if classes and all(WNID.fullmatch(c) for c in classes) and all("/" in n for n in self.names):
            if len(classes) != IMAGENET_CLASSES:
                warn_caller(f"{root}: ImageFolder layout with {len(classes)} class folders, not "
                            f"{IMAGENET_CLASSES}: class indices are positions among these sorted "
                            f"WNIDs; for a subset of ImageNet give a {LABELS_CSV} with the "
                            "ImageNet class indices")
            index = {wnid: i for i, wnid in enumerate(classes)}
            self.labels = np.array([index[n.split("/")[0]] for n in self.names], dtype=np.int64)
            self.layout = "imagefolder"

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]

    def fingerprint(self) -> str:
        """sha256 of the file list (and labels): a restart must see the same images in the same
        order, with the same labels."""
        text = "\n".join(self.names)
        if self.labels is not None:
            text += "\n" + ",".join(map(str, self.labels.tolist()))
        return hashlib.sha256(text.encode()).hexdigest()

    def load(self, index: int) -> np.ndarray:
        from PIL import Image

        try:
            return read_rgb(self.root / self.names[index])
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise UnreadableImage(f"{type(err).__name__}: {err}") from err


def _read_labels_csv(root: Path) -> tuple:
    """``(names, labels)`` from ``root/labels.csv``, sorted by file name; every listed file
    must exist (a missing one is named)."""
    path = root / LABELS_CSV
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetRunError(f"cannot read {path}: {err}") from err
    if not rows or not {FILE_COLUMN, CLASS_COLUMN} <= set(rows[0]):
        raise DatasetRunError(f"{path} needs a header with the columns {FILE_COLUMN!r} and "
                              f"{CLASS_COLUMN!r} and at least one row")
    entries = {}
    for line, row in enumerate(rows, start=2):
        name, label = (row.get(FILE_COLUMN) or "").strip(), (row.get(CLASS_COLUMN) or "").strip()
        if not name or not re.fullmatch(r"\d+", label):
            raise DatasetRunError(f"{path} line {line}: expected a file name and a non-negative "
                                  f"integer class index, got {name!r}, {label!r}")
        if name in entries:
            raise DatasetRunError(f"{path} line {line}: {name} is listed twice")
        entries[name] = int(label)
    for prefix in ("", "images/"):
        missing = [n for n in entries if not (root / prefix / n).is_file()]
        if not missing:
            break
        if prefix == "":
            first_missing = missing
    else:
        raise DatasetRunError(f"{path} lists {len(first_missing)} file(s) that are not in {root} "
                              f"(first: {first_missing[0]})")
    names = sorted(prefix + n for n in entries)
    return names, np.array([entries[n[len(prefix):]] for n in names], dtype=np.int64)


class NpzSource:
    """An npz archive with ``images`` (uint8, ``N x H x W`` or ``N x H x W x C``) and
    optionally ``labels`` (N integer classes), as in ``../shared/data``."""

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
