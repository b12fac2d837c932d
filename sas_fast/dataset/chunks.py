"""The output folder of a dataset run: chunk files, their records, the manifest, the merge.

Chunk ``c`` holds dataset indices ``[c * chunk_size, (c + 1) * chunk_size)`` whatever the number
of processes, in ``chunk_{c:06d}.npz``; its record ``chunk_{c:06d}.json`` (written after it)
holds the file's sha256. Every file is written to a temporary name in the same folder and
moved into place with ``os.replace``, so a reader (or a restart) sees a whole file or none.
A chunk is done when its record exists, matches its index range, and the file's sha256
matches the record; anything else is redone.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..checks import check_writable
from .errors import DatasetRunError
from .folder import MANIFEST, TEMP_MARK, owned_folder, read_manifest

MERGED = "saliency.npz"
#: arrays with one row per attributed image, concatenated by :func:`merge`.
PER_IMAGE = ("indices", "names", "saliency", "targets", "labels", "clean_scores",
             "scores_insertion", "scores_deletion")


def chunk_file(chunk: int) -> str:
    return f"chunk_{chunk:06d}.npz"


def record_file(chunk: int) -> str:
    return f"chunk_{chunk:06d}.json"


def chunk_ranges(count: int, chunk_size: int) -> list:
    """The dataset index range of every chunk, in order."""
    return [range(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, ``os.replace``."""
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when the file is missing or not a JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def remove_temp_files(out_dir: Path) -> None:
    """Delete the temporary files an interrupted run of this tool left behind (names with
    :data:`TEMP_MARK`; nothing else)."""
    for temp in out_dir.glob(f".*{TEMP_MARK}*"):
        temp.unlink(missing_ok=True)


def write_chunk(out_dir: Path, chunk: int, span: range, arrays: dict, details: dict) -> dict:
    """Save one chunk's arrays, then its record (with the file's sha256); returns the record."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    atomic_write(out_dir / chunk_file(chunk), data)
    record = {"chunk": chunk, "file": chunk_file(chunk), "sha256": hashlib.sha256(data).hexdigest(),
              "start": span.start, "stop": span.stop, "images": int(len(arrays["indices"])), **details}
    write_json(out_dir / record_file(chunk), record)
    return record


def verified_record(out_dir: Path, chunk: int, span: range) -> dict | None:
    """The chunk's record if the chunk is done and intact, else None."""
    record = read_json(out_dir / record_file(chunk))
    path = out_dir / chunk_file(chunk)
    if record is None or record.get("start") != span.start or record.get("stop") != span.stop:
        return None
    if not path.is_file() or sha256_file(path) != record.get("sha256"):
        return None
    return record


def read_chunk(path: Path, span: range) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise DatasetRunError(f"cannot read {path}: {err}") from err
    covered = np.concatenate([arrays["indices"], arrays["skipped"]])
    if sorted(covered.tolist()) != list(span) or np.any(np.diff(arrays["indices"]) <= 0):
        raise DatasetRunError(f"{path} does not cover its index range {span.start}..{span.stop - 1} "
                              "exactly once")
    return arrays


def merge(out_dir, dest=None) -> Path:
    """Assemble the chunks of a finished run into one npz in dataset order.

    Every chunk is verified (sha256, index range covered exactly once by attributed and
    skipped images). The npz holds ``indices`` (dataset index of each map), ``names``,
    ``saliency`` (float16 ``N x H x W``), ``targets``, ``labels`` (npz sources with labels),
    ``clean_scores`` (softmax probability of the target), ``scores_<mode>`` (``N x K`` mask
    scores of the last iteration), ``areas`` (``K``) and ``skipped`` (indices of unreadable
    images). ``dest`` defaults to ``out_dir/saliency.npz``. Returns the path written.
    """
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).is_file():             # before a lock file is made there
        raise DatasetRunError(f"no {MANIFEST} in {out_dir}: not an attribute-dataset output folder")
    with owned_folder(out_dir, read_only_ok=dest is not None):
        manifest = read_manifest(out_dir)
        try:
            dest = check_writable(dest if dest is not None else out_dir / MERGED, "merged npz")
        except ValueError as err:
            raise DatasetRunError(str(err)) from err
        config = manifest["config"]
        spans = chunk_ranges(config["source"]["count"], config["chunk_size"])
        bad = [c for c, span in enumerate(spans) if verified_record(out_dir, c, span) is None]
        if bad:
            raise DatasetRunError(f"{len(bad)} of {len(spans)} chunks missing or corrupt in {out_dir} "
                                  f"(first: {chunk_file(bad[0])}); rerun attribute-dataset with the same "
                                  "arguments to finish them")
        parts = [read_chunk(out_dir / chunk_file(c), span) for c, span in enumerate(spans)]
        filled = [p for p in parts if len(p["indices"])]
        if not filled:
            raise DatasetRunError(f"no image of {out_dir} was attributed (all were unreadable)")
        try:
            merged = {key: np.concatenate([p[key] for p in filled]) for key in PER_IMAGE if key in filled[0]}
        except ValueError as err:
            raise DatasetRunError(f"the chunks of {out_dir} do not fit together: {err}") from err
        merged["areas"] = filled[0]["areas"]
        merged["skipped"] = np.concatenate([p["skipped"] for p in parts])
        buffer = io.BytesIO()
        np.savez(buffer, **merged)
        atomic_write(dest, buffer.getvalue())
        return dest
