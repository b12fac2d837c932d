"""``sas-fast evaluate``: the deletion / insertion game (docs/SPEC.md section 5) on the stored maps
of finished dataset runs, and the table-2 comparison between them.

Every image is scored alone, exactly as :func:`sas_fast.evaluate.deletion_game` scores one image
(its map as stored, float16; the model in float32; the noise keyed by the dataset index), so a
folder's numbers equal those of a study script that scores the same maps. Chunk ``c`` of a run is
scored into ``game_{c:06d}.npz`` (written atomically; a rerun redoes only the missing ones, and
under torchrun rank ``c mod world_size`` scores it); then ``game.npz`` holds ``indices``,
``ratios``, ``insertion``, ``deletion`` (``N x 11``) and ``overall`` (``N``), which the gallery shows.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..evaluate import deletion_game
from .chunks import atomic_write, chunk_file, chunk_ranges, read_chunk
from .errors import DatasetRunError
from .folder import read_manifest
from .model_spec import model_input, resolve_model
from .sources import open_source
from .workers import claim, start_workers

GAME = "game.npz"
RATIOS = np.linspace(0, 1, 11)


def _part(chunk: int) -> str:
    return f"game_{chunk:06d}.npz"


def _open_run(out: Path) -> dict:
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        raise DatasetRunError(f"no manifest.json in {out}: not an attribute-dataset output folder")
    if not manifest["complete"]:
        raise DatasetRunError(f"the run in {out} is not complete: rerun its attribute-dataset command first")
    return manifest


def _same_images(runs: dict) -> None:
    """Every folder was made from the same images with the same model (else one line)."""
    first, *rest = runs.items()
    for out, manifest in rest:
        for key in ("source", "model"):
            if manifest["config"][key] != first[1]["config"][key]:
                raise DatasetRunError(f"{out} and {first[0]} hold runs of different {key}s: evaluate "
                                      "compares maps of the same images and model")


def _score_chunk(out: Path, chunk: int, span: range, source, model, preprocess, device) -> None:
    arrays = read_chunk(out / chunk_file(chunk), span)
    curves = {"insertion": [], "deletion": []}
    for index, saliency, target in zip(arrays["indices"], arrays["saliency"], arrays["targets"]):
        x = model_input(preprocess, source.load(int(index)))[None].to(device)
        game = deletion_game(model, x, torch.from_numpy(saliency)[None].float().to(device), int(target),
                             image_ids=[int(index)])
        curves["insertion"].append(game.insertion[0].numpy())
        curves["deletion"].append(game.deletion[0].numpy())
    buffer = io.BytesIO()
    np.savez(buffer, indices=arrays["indices"],
             **{k: np.array(v, dtype=np.float64).reshape(-1, len(RATIOS)) for k, v in curves.items()})
    atomic_write(out / _part(chunk), buffer.getvalue())


def _done(out: Path, chunk: int) -> bool:
    try:
        with np.load(out / _part(chunk), allow_pickle=False) as part:
            return part["insertion"].shape == part["deletion"].shape == (len(part["indices"]), len(RATIOS))
    except (OSError, ValueError, KeyError):
        return False


def _assemble(out: Path, chunks: int) -> dict:
    parts = []
    for c in range(chunks):
        with np.load(out / _part(c), allow_pickle=False) as part:
            parts.append({k: part[k] for k in ("indices", "insertion", "deletion")})
    game = {k: np.concatenate([p[k] for p in parts]) for k in ("indices", "insertion", "deletion")}
    game["ratios"] = RATIOS
    game["overall"] = game["insertion"].mean(1) - game["deletion"].mean(1)
    buffer = io.BytesIO()
    np.savez(buffer, **game)
    atomic_write(out / GAME, buffer.getvalue())
    return game


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")


def compare(games: dict, manifests: dict) -> list:
    """One row per folder: method, N, Ins, Del, Overall with standard errors, and after the first
    folder the paired difference of Overall against it on the images both scored."""
    rows, (first, reference) = [], next(iter(games.items()))
    for out, game in games.items():
        row = {"folder": str(out), "method": manifests[out]["config"].get("method", "sas"),
               "images": int(game["indices"].size), "ins": float(game["insertion"].mean()),
               "del": float(game["deletion"].mean()), "overall": float(game["overall"].mean()),
               "overall_se": _se(game["overall"])}
        if out != first:
            shared, mine, theirs = np.intersect1d(game["indices"], reference["indices"], return_indices=True)
            diff = game["overall"][mine] - reference["overall"][theirs]
            row.update(paired_images=int(shared.size), paired_delta=float(diff.mean()),
                       paired_se=_se(diff), wins=int((diff > 0).sum()))
        rows.append(row)
    return rows


def table(rows: list) -> str:
    """The rows of :func:`compare` as a Markdown table (table 2 of the paper, paired)."""
    lines = [f"| folder | method | N | Ins | Del | Overall ± se | paired Δ vs {rows[0]['folder']} (wins) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        paired = (f"{r['paired_delta']:+.3f} ± {r['paired_se']:.3f} ({r['wins']}/{r['paired_images']})"
                  if "paired_delta" in r else "-")
        lines.append(f"| {r['folder']} | {r['method']} | {r['images']} | {r['ins']:.3f} | {r['del']:.3f} | "
                     f"{r['overall']:.3f} ± {r['overall_se']:.3f} | {paired} |")
    return "\n".join(lines)


def write_rows(rows: list, csv_path=None, json_path=None) -> None:
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=1) + "\n")
    if csv_path is not None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


def evaluate_runs(dirs, progress: bool | None = None) -> list:
    """Score the maps of every folder in ``dirs`` (finished ``attribute-dataset`` runs of the same
    images and model) with the deletion game and return :func:`compare`'s rows; resumable, sharded
    under torchrun (rank 0 writes each ``game.npz``)."""
    manifests = {Path(d): _open_run(Path(d)) for d in dirs}
    if not manifests:
        raise DatasetRunError("give at least one output folder of attribute-dataset")
    _same_images(manifests)
    config = next(iter(manifests.values()))["config"]
    source = open_source(config["source"]["path"])
    if source.fingerprint() != config["source"]["fingerprint"]:
        raise DatasetRunError(f"the images at {config['source']['path']} changed since the runs: "
                              "evaluate needs the images the maps were made of")
    workers = start_workers()
    model, preprocess = resolve_model(config["model"])
    model = model.float().to(workers.device)
    games = {}
    try:
        for out, manifest in manifests.items():
            with claim(out, workers):
                spans = chunk_ranges(config["source"]["count"], manifest["config"]["chunk_size"])
                mine = [c for c in range(workers.rank, len(spans), workers.world) if not _done(out, c)]
                quiet = True if workers.rank != 0 or progress is False else None if progress is None else False
                for c in tqdm(mine, desc=f"evaluate {out.name}", unit="chunk", disable=quiet):
                    _score_chunk(out, c, spans[c], source, model, preprocess, workers.device)
                if workers.world > 1:
                    dist.barrier()          # every chunk scored before rank 0 assembles them
                games[out] = _assemble(out, len(spans)) if workers.rank == 0 else None
                if workers.world > 1:
                    dist.barrier()
        return compare(games, manifests) if workers.rank == 0 else []
    finally:
        if workers.owns_group:
            dist.destroy_process_group()
