"""Who may write into a dataset run's output folder.

A run (and ``merge``) writes only into an empty folder or one that a run of this tool made (its
``manifest.json`` names :data:`FORMAT`), and only while it holds the
folder's lock: an exclusive ``flock`` on ``.sas-fast.lock``, taken before anything else is
written and released when the process ends, however it ends (the kernel drops the lock of a dead
process, so a stale lock file never blocks a later run). The lock file names the holding process.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path

from .errors import DatasetRunError

MANIFEST = "manifest.json"
#: the manifest's ``format``: how a folder made by this tool is recognised
FORMAT = "sas_fast.attribute-dataset/1"
#: in the name of every temporary file this tool writes (and the only files it deletes)
TEMP_MARK = ".tmp-sas-fast-"
LOCK = ".sas-fast.lock"
#: the manifest's schema: required keys and their types (``int`` excludes ``bool``)
SCHEMA = {"": {"format": str, "config": dict, "complete": bool, "chunks": list, "skipped": list,
               "runs": list},
          "config": {"source": dict, "model": str, "targets": str, "seed": int, "iterations": int,
                     "precision": str, "chunk_size": int, "sas_options": dict},
          "config.source": {"kind": str, "path": str, "count": int, "labels": bool, "fingerprint": str}}
#: the least value of each integer that has one
LEAST = {"config.source.count": 0, "config.chunk_size": 1, "config.iterations": 1}


def check_ownership(out: Path) -> None:
    """``DatasetRunError`` unless ``out`` is empty (this tool's lock and temporary files aside)
    or holds a manifest that this tool wrote."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            format_ = json.loads(manifest.read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            format_ = None
        if format_ != FORMAT:
            raise DatasetRunError(f"{manifest} was not written by sas-fast attribute-dataset: use an "
                                  "empty output folder (nothing in this one was changed)")
        return
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK and TEMP_MARK not in p.name)
    if others:
        raise DatasetRunError(f"{out} holds files that are not a sas-fast run ({others[0]}"
                              f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}): use an "
                              "empty output folder (nothing in this one was changed)")


@contextlib.contextmanager
def owned_folder(out: Path, read_only_ok: bool = False):
    """Hold ``out``'s lock for the ``with`` block, after checking (before writing anything, and
    again under the lock) that this tool may write there; ``DatasetRunError`` otherwise. With
    ``read_only_ok`` (``merge`` into a file elsewhere), a folder where no lock file can be made
    is used without one: no run can be writing there either."""
    if not out.is_dir():
        raise DatasetRunError(f"{out} is not a folder")
    check_ownership(out)
    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if read_only_ok and err.errno in (errno.EACCES, errno.EROFS):
            yield out
            return
        raise DatasetRunError(f"cannot lock output folder {out}: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            raise DatasetRunError(f"{out} is in use by another sas-fast run (process {holder}): wait "
                                  "for it to end, or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        check_ownership(out)
        yield out
    finally:
        os.close(fd)


def read_manifest(out: Path) -> dict | None:
    """``out``'s manifest checked against :data:`SCHEMA` (keys, types, :data:`LEAST`) and against
    the folder (every chunk it lists, and every chunk file there, within ``config.source.count``);
    None when there is none. ``DatasetRunError`` naming the first key that does not fit."""
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetRunError(f"{path} is not readable JSON ({err})") from None
    for prefix, fields in SCHEMA.items():
        node = manifest
        for part in filter(None, prefix.split(".")):
            node = node[part]
        if not isinstance(node, dict):
            raise DatasetRunError(f"{path}: {prefix or 'the manifest'} must be a JSON object")
        for key, kind in fields.items():
            name = f"{prefix}.{key}".lstrip(".")
            value = node.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise DatasetRunError(f"{path}: {name} must be {kind.__name__}, got {value!r} "
                                      "(a damaged or edited manifest: use another output folder)")
            if name in LEAST and value < LEAST[name]:
                raise DatasetRunError(f"{path}: {name} must be >= {LEAST[name]}, got {value!r}")
    config = manifest["config"]
    count, size = config["source"]["count"], config["chunk_size"]
    spans = -(-count // size)
    listed = [c.get("chunk") if isinstance(c, dict) else None for c in manifest["chunks"]]
    on_disk = {int(p.name[6:12]) for p in out.glob("chunk_[0-9][0-9][0-9][0-9][0-9][0-9].*")}
    beyond = sorted(c for c in set(listed) | on_disk if not (isinstance(c, int) and 0 <= c < spans))
    if beyond:
        raise DatasetRunError(f"{path}: config.source.count = {count} with chunk_size {size} makes "
                              f"{spans} chunks, but chunk {beyond[0]!r} is listed or on disk "
                              "(a damaged or edited manifest: use another output folder)")
    return manifest
