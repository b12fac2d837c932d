"""The sharded, resumable loop of a dataset run (see :mod:`sas_fast.dataset`)."""
from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..attribute import attribute
from ..checks import model_logits
from ..config import PRECISIONS, make_config
from ..precision import resolve_precision
from ..step import mask_areas, mode_names
from .chunks import (chunk_ranges, read_json, record_file, remove_temp_files, verified_record, write_chunk,
                     write_json)
from .errors import DatasetRunError
from .folder import FORMAT, MANIFEST, read_manifest
from .methods import BASELINES, baseline_maps, check_method
from .model_spec import model_input, resolve_model
from .sources import UnreadableImage, describe, open_source
from .workers import Workers, claim, start_workers

TARGETS = ("auto", "labels", "predicted")
#: attribute() arguments the dataset run sets itself.
RESERVED_OPTIONS = ("return_trace", "progress", "trace_iterations", "target", "additional_forward_args",
                    "max_seconds")


def _check_arguments(batch_size, iterations, precision, targets, chunk_size, max_chunks, sas_options):
    """Validate the arguments (cheap checks first) and return the resolved SaS config."""
    checked = (("batch_size", batch_size), ("chunk_size", chunk_size)) + \
        ((("iterations", iterations),) if iterations is not None else ())
    for name, value in checked:
        if not isinstance(value, int) or value < 1:
            raise DatasetRunError(f"{name} must be a positive integer, got {value!r}")
    if max_chunks is not None and (not isinstance(max_chunks, int) or max_chunks < 0):
        raise DatasetRunError(f"max_chunks must be a non-negative integer or None, got {max_chunks!r}")
    if precision not in (None, *PRECISIONS):
        raise DatasetRunError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if targets not in TARGETS:
        raise DatasetRunError(f"unknown targets {targets!r}; choose one of {TARGETS}")
    reserved = sorted(set(sas_options) & set(RESERVED_OPTIONS))
    if reserved:
        raise DatasetRunError(f"option(s) {reserved} are set by the dataset run itself")
    options = {k: v for k, v in sas_options.items() if k not in ("preset", "layer")}
    try:
        if iterations is not None:
            options["iterations"] = iterations
        return make_config(sas_options.get("preset", "default"), **options)
    except (TypeError, ValueError) as err:
        raise DatasetRunError(str(err)) from err


def _prepare_out_dir(out_dir) -> Path:
    out = Path(out_dir).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        raise DatasetRunError(f"cannot write to output folder {out_dir}: {err.strerror or err}") from err
    return out


def _open_manifest(out: Path, config: dict, workers: Workers) -> None:
    """Start a new run's manifest, or check that the folder's run has the same configuration (a
    run that finished no chunk, e.g. one stopped by a bad model, is replaced by the new one)."""
    existing = read_manifest(out)
    started = any(out.glob("chunk_*"))
    if workers.world > 1:
        dist.barrier()      # every process has looked at the folder before rank 0 writes to it
    if existing is None or (existing.get("config") != config and not started):
        if workers.rank == 0:
            write_json(out / MANIFEST, {"format": FORMAT, "config": config, "complete": False,
                                        "chunks": [], "skipped": [], "runs": []})
    elif existing.get("config") != config:
        old = existing.get("config") or {}
        differ = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise DatasetRunError(f"{out} holds a run with another configuration ({', '.join(differ)} "
                              "differ): use the same arguments to resume it, or another output folder")
    if workers.rank == 0:
        remove_temp_files(out)
    if workers.world > 1:
        dist.barrier()      # the manifest is there before any process writes a chunk


def _close_manifest(out: Path, spans: list, run: dict) -> dict:
    """Record the chunks on disk, the skipped images, and this run's throughput."""
    manifest = read_manifest(out)
    records = [read_json(out / record_file(c)) for c in range(len(spans))]
    records = [r for r, span in zip(records, spans)
               if r is not None and (r.get("start"), r.get("stop")) == (span.start, span.stop)]
    keys = ("chunk", "file", "sha256", "start", "stop", "images")
    manifest["chunks"] = [{k: r[k] for k in keys} for r in records]
    manifest["skipped"] = [s for r in records for s in r["skipped"]]
    manifest["complete"] = len(records) == len(spans)
    manifest["runs"].append(run)
    manifest["throughput"] = run
    write_json(out / MANIFEST, manifest)
    return manifest


def _readable_batches(source, span: range, batch_size: int, skipped: list):
    """Lists of ``(index, image)`` of up to ``batch_size`` readable images, in index order;
    unreadable images are appended to ``skipped`` with a warning."""
    batch = []
    for index in span:
        try:
            batch.append((index, source.load(index)))
        except UnreadableImage as err:
            warnings.warn(f"skipping unreadable image {source.name(index)}: {err}", stacklevel=2)
            skipped.append({"index": index, "name": source.name(index), "reason": str(err)})
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class Job:
    """What every chunk of one run needs."""

    source: object
    model: torch.nn.Module
    preprocess: object
    device: torch.device
    use_labels: bool
    precision: str
    batch_size: int
    iterations: int
    seed: int
    modes: tuple
    areas: np.ndarray
    sas_options: dict
    method: str = "sas"


def _attribute_batch(job: Job, batch: list) -> dict:
    """SaS maps, targets, clean-image scores and last-iteration mask scores of one batch of
    ``(index, image)``, as the chunk file's per-image arrays."""
    indices = [i for i, _ in batch]
    inputs = [model_input(job.preprocess, image) for _, image in batch]
    if len({tuple(x.shape) for x in inputs}) > 1:
        raise DatasetRunError(f"preprocess gave inputs of different sizes for images {indices}: "
                              "a model spec's preprocess must give one size")
    x = torch.stack(inputs).to(job.device)
    with torch.no_grad(), torch.autocast(job.device.type, dtype=torch.bfloat16,
                                         enabled=job.precision == "bf16"):
        logits = model_logits(job.model, x).float()
    if job.use_labels:
        target = torch.as_tensor(job.source.labels[indices], device=job.device)
        bad = (target < 0) | (target >= logits.shape[-1])
        if bool(bad.any()):
            raise DatasetRunError(f"label {int(target[bad][0])} of image {indices[int(bad.nonzero()[0])]} "
                                  f"is out of range for a model with {logits.shape[-1]} classes")
    else:
        target = logits.argmax(-1)
    if job.method == "sas":
        saliency, trace = attribute(job.model, x, target, iterations=job.iterations, seed=job.seed,
                                    precision=job.precision, return_trace=True,
                                    trace_iterations=(job.iterations - 1,), progress=False, **job.sas_options)
    else:
        saliency = baseline_maps(job.method, job.model, x, target)
    arrays = {"indices": np.array(indices, dtype=np.int64),
              "names": np.array([job.source.name(i) for i in indices]),
              "saliency": saliency.cpu().numpy().astype(np.float16),
              "targets": target.cpu().numpy().astype(np.int64),
              "clean_scores": logits.softmax(-1).gather(1, target[:, None])[:, 0].cpu().numpy()}
    if job.source.labels is not None:
        arrays["labels"] = job.source.labels[indices]
    for mode in job.modes:                                    # SaS's mask scores (no mode: a baseline)
        arrays[f"scores_{mode}"] = trace.scores[mode][-1].float().cpu().numpy()
    return arrays


def _attribute_chunk(job: Job, out: Path, chunk: int, span: range, rank: int) -> dict:
    """Attribute one chunk batch by batch and write it; returns its record."""
    started = time.perf_counter()
    skipped = []
    batches = _readable_batches(job.source, span, job.batch_size, skipped)
    parts = [_attribute_batch(job, batch) for batch in batches]
    if parts:
        arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    else:
        arrays = {"indices": np.zeros(0, np.int64), "names": np.array([], dtype=str),
                  "saliency": np.zeros((0, 0, 0), np.float16), "targets": np.zeros(0, np.int64),
                  "clean_scores": np.zeros(0, np.float32),
                  **{f"scores_{m}": np.zeros((0, len(job.areas)), np.float32) for m in job.modes}}
    arrays["areas"] = job.areas
    arrays["skipped"] = np.array([s["index"] for s in skipped], dtype=np.int64)
    return write_chunk(out, chunk, span, arrays, {"rank": rank, "skipped": skipped,
                                                  "seconds": round(time.perf_counter() - started, 3)})


def _run_chunks(job: Job, out: Path, spans: list, pending: list, workers: Workers, progress):
    """Attribute this process's ``pending`` chunks in lock-step rounds (one chunk per process per
    round, then a sum of the images done for rank 0's progress bar).

    Returns the totals over all processes: (images attributed, images skipped, wall seconds,
    CPU seconds)."""
    rounds, = workers.reduce([len(pending)], "max")
    todo, = workers.reduce([sum(len(spans[c]) for c in pending)])
    bar = tqdm(total=int(todo), unit="img", desc="attribute-dataset",
               disable=workers.rank != 0 or (None if progress is None else not progress))
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    attributed = skipped = 0
    for step in range(int(rounds)):
        done = 0
        if step < len(pending):
            record = _attribute_chunk(job, out, pending[step], spans[pending[step]], workers.rank)
            attributed += record["images"]
            skipped += len(record["skipped"])
            done = len(spans[pending[step]])
        bar.update(int(workers.reduce([done])[0]))
    bar.close()
    if workers.device.type == "cuda":
        torch.cuda.synchronize(workers.device)
    wall, = workers.reduce([time.perf_counter() - started_wall], "max")
    images, skipped, cpu = workers.reduce([attributed, skipped, time.process_time() - started_cpu])
    return images, skipped, wall, cpu


def _throughput(workers: Workers, batch_size: int, images: float, skipped: float, wall: float,
                cpu: float) -> dict:
    per_image = (lambda seconds: round(seconds / images, 4)) if images else (lambda seconds: None)
    gpu = workers.device.type == "cuda"
    return {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "world_size": workers.world, "device": workers.device.type, "batch_size": batch_size,
            "images": int(images), "skipped": int(skipped), "wall_s": round(wall, 3),
            "images_per_s": round(images / wall, 4) if images and wall > 0 else None,
            "cpu_s_per_image": per_image(cpu),
            "gpu_s_per_image": per_image(wall * workers.world) if gpu else None}


def _report(run: dict, manifest: dict, out: Path) -> str:
    line = (f"attribute-dataset: {run['images']} images attributed, {run['skipped']} unreadable skipped, in "
            f"{run['wall_s']:.1f} s on {run['world_size']} process(es) [{run['device']}]")
    if run["images"]:
        line += f": {run['images_per_s']:.3f} images/s, {run['cpu_s_per_image']:.3f} CPU-s/image"
        if run["gpu_s_per_image"] is not None:
            line += f", {run['gpu_s_per_image']:.3f} GPU-s/image"
    done, total = len(manifest["chunks"]), len(chunk_ranges(manifest["config"]["source"]["count"],
                                                            manifest["config"]["chunk_size"]))
    state = "complete" if manifest["complete"] else "incomplete: rerun the same command to finish"
    return f"{line}\n{done}/{total} chunks in {out} ({state})"


def attribute_dataset(images_src, model_spec: str, out_dir, *, batch_size: int = 32,
                      iterations: int | None = None, precision: str | None = None, targets: str = "auto",
                      seed: int = 0, chunk_size: int = 128, max_chunks: int | None = None,
                      progress: bool | None = None, method: str = "sas", **sas_options) -> dict:
    """Attribute every image of ``images_src`` with SaS (or a baseline) into chunk files under ``out_dir``.

    Args:
        images_src: a folder of images or an ``.npz`` with ``images`` (uint8) and ``labels``.
        model_spec: see :mod:`sas_fast.dataset.model_spec`.
        out_dir: output folder (created); rerunning on it resumes the run.
        batch_size: images per :func:`sas_fast.attribute` call.
        iterations, seed: SaS iterations (None: the preset's, ``sas_options["preset"]``, 200 for
            the default) and pre-mask seed.
        precision: None / ``"fp32"``, ``"bf16"`` (the model under bf16 autocast; the
            clean-image scores too), or ``"auto"`` (bf16 where the device computes it natively,
            :mod:`sas_fast.precision`; the manifest records the choice).
        targets: ``"labels"``, ``"predicted"`` (top-1 on the clean image), or ``"auto"``
            (labels when the source has them).
        chunk_size: images per chunk file (the unit of resumption and of sharding).
        max_chunks: stop after this many chunks per process (time-boxed jobs); a rerun continues.
        progress: rank 0's progress bar (None: only on a terminal).
        method: ``"sas"`` or a baseline of :mod:`sas_fast.dataset.methods` (``gradient``,
            ``guided-bp``, ``integrated-gradients``, ``grad-cam``, ``extremal-perturbation``: no
            SaS setting, float32 model, recorded in the manifest); one output folder per method.
        **sas_options: further :func:`sas_fast.attribute` options (``window``, ``mode``, ...).

    Returns:
        This run's throughput (images, wall_s, images_per_s, cpu_s_per_image, gpu_s_per_image),
        the same on every process; rank 0 also writes it to the manifest and prints it.
    """
    check_method(method, iterations, precision, sas_options)
    sas_config = _check_arguments(batch_size, iterations, precision, targets, chunk_size, max_chunks,
                                  sas_options)
    iterations = sas_config.iterations if method == "sas" else BASELINES[method][1]
    source = open_source(images_src)
    if targets == "labels" and source.labels is None:
        raise DatasetRunError(f"{images_src} has no labels: use targets 'predicted'")
    use_labels = targets != "predicted" and source.labels is not None
    out = _prepare_out_dir(out_dir)
    workers = start_workers()
    precision = resolve_precision(precision or "fp32", workers.device).precision
    folder = contextlib.ExitStack()
    try:
        config = {"source": describe(source), "model": model_spec,
                  "targets": "labels" if use_labels else "predicted", "seed": seed,
                  "iterations": iterations, "precision": precision, "chunk_size": chunk_size,
                  "sas_options": {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in sorted(sas_options.items())},
                  **({"method": method} if method != "sas" else {})}
        model, preprocess = resolve_model(model_spec)
        folder.enter_context(claim(out, workers))
        _open_manifest(out, config, workers)
        job = Job(source, model.to(workers.device), preprocess, workers.device, use_labels,
                  precision, batch_size, iterations, seed,
                  mode_names(sas_config.mode) if method == "sas" else (),
                  mask_areas(sas_config.num_masks).numpy(), sas_options, method)
        spans = chunk_ranges(len(source), chunk_size)
        pending = [c for c in range(workers.rank, len(spans), workers.world)
                   if verified_record(out, c, spans[c]) is None][:max_chunks]
        images, skipped, wall, cpu = _run_chunks(job, out, spans, pending, workers, progress)
        run = _throughput(workers, batch_size, images, skipped, wall, cpu)
        if workers.rank == 0:
            print(_report(run, _close_manifest(out, spans, run), out), flush=True)
        if workers.world > 1:
            dist.barrier()          # no process leaves before the manifest is final
        return run
    finally:
        folder.close()
        if workers.owns_group:
            dist.destroy_process_group()
