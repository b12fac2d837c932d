"""``sas-fast gallery DIR``: one static HTML page to look at a dataset run.

Reads the output folder of ``sas-fast attribute-dataset``: ``saliency.npz`` (written by
:func:`sas_fast.dataset.merge`, here if it is missing), ``manifest.json`` (where the images
come from and the model spec) and, when ``sas-fast evaluate`` has scored the maps, ``game.npz``
(``indices``, ``ratios``, ``insertion`` / ``deletion`` curves, ``overall``). Writes
``index.html`` and, beside it in ``images/``, two PNGs per image: the image as the model saw
it and the map overlaid on it. The page lists each image with its class, the model's
probability of it, Ins / Del / Overall and the game's curves (inline SVG); a click on a
column head sorts by it (a few lines of plain JavaScript; no server, nothing fetched);
``index.html?check`` makes the page load every image, sort by Overall and write what it saw
into ``#check`` (the browser test reads it).

"As the model saw it": the model spec's preprocessing is applied to the image and mapped back
to [0, 1] per pixel through the preprocessing of an all-black and an all-white image of the
same size, exact for any resize / crop followed by a per-channel affine normalisation; where
the model spec cannot be loaded here, the stored image is shown.
"""
from __future__ import annotations

import argparse
import html
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import warn_caller
from .dataset.chunks import MERGED, merge, read_json
from .dataset.folder import MANIFEST, read_manifest
from .dataset.errors import DatasetRunError
from .dataset.model_spec import model_input, resolve_model
from .dataset.sources import open_source
from .viz import overlay, save_png

GAME = "game.npz"
#: the arrays each file must hold
SALIENCY_KEYS = ("indices", "names", "saliency", "targets")
GAME_KEYS = ("indices", "ratios", "insertion", "deletion", "overall")


def _read_npz(path: Path, keys: tuple) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise DatasetRunError(f"cannot read {path}: {err}") from err
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DatasetRunError(f"{path} has no {missing} array(s) (it has {sorted(arrays)})")
    return arrays


def _game_by_index(path: Path, indices: np.ndarray) -> dict:
    """``{dataset index: (insertion curve, deletion curve, overall)}`` and ``ratios`` from
    ``game.npz`` (empty without it); every scored image must be one of ``indices``."""
    if not path.exists():
        return {}
    game = _read_npz(path, GAME_KEYS)
    n, r = len(game["indices"]), len(game["ratios"])
    for key, shape in (("insertion", (n, r)), ("deletion", (n, r)), ("overall", (n,))):
        if game[key].shape != shape:
            raise DatasetRunError(f"{path}: {key!r} has shape {game[key].shape}, expected {shape}")
    unknown = np.setdiff1d(game["indices"], indices)
    if len(unknown):
        raise DatasetRunError(f"{path} scores images that {MERGED} does not hold (first: index "
                              f"{int(unknown[0])}): it belongs to another run")
    rows = {int(i): (game["insertion"][j], game["deletion"][j], float(game["overall"][j]))
            for j, i in enumerate(game["indices"])}
    return {"ratios": game["ratios"], "rows": rows}


def _model_view(preprocess, image: np.ndarray) -> np.ndarray:
    """``image`` as the model sees it, ``H' x W' x 3`` in [0, 1] (see the module docstring)."""
    x, black, white = (model_input(preprocess, a) for a in
                       (image, np.zeros_like(image), np.full_like(image, 255)))
    span, view = white - black, torch.zeros_like(x)
    seen = span.abs() > 1e-6                       # pixels the preprocessing does not ignore
    view[seen] = ((x - black)[seen] / span[seen]).clamp(0, 1)
    view = view[:3] if view.shape[0] >= 3 else view[:1].expand(3, -1, -1)
    return view.permute(1, 2, 0).numpy()


def _stored_view(image: np.ndarray) -> np.ndarray:
    """A stored uint8 image (``H x W``, ``H x W x 1`` or ``H x W x 3+``) as ``H x W x 3`` in [0, 1]."""
    image = image[..., None] if image.ndim == 2 else image
    image = np.repeat(image[..., :1], 3, -1) if image.shape[-1] < 3 else image[..., :3]
    return image.astype(np.float32) / 255


def _viewer(config: dict):
    """``index -> H x W x 3`` picture of the run's image ``index``."""
    source = open_source(config["source"]["path"])
    try:
        _, preprocess = resolve_model(config["model"])
    except (ValueError, ImportError, OSError, RuntimeError) as err:
        warn_caller(f"cannot load model {config['model']!r} here ({err}); the gallery shows the "
                    "stored images, not the model's preprocessed input")
        return lambda index: _stored_view(source.load(index))
    return lambda index: _model_view(preprocess, source.load(index))


def _curves_svg(ratios: np.ndarray, insertion: np.ndarray, deletion: np.ndarray) -> str:
    w, h = 120, 50

    def points(values):
        return " ".join(f"{w * float(r):.1f},{h * (1 - float(v)):.1f}" for r, v in zip(ratios, values))
    return (f'<svg width="{w}" height="{h}"><rect width="{w}" height="{h}" fill="#f4f4f4"/>'
            f'<polyline class="ins" points="{points(insertion)}"/>'
            f'<polyline class="del" points="{points(deletion)}"/></svg>')


def _cell(value: float) -> str:
    return f"{value:.3f}" if value == value else "&ndash;"      # NaN: not scored


def _img(index: int, suffix: str, what: str, width: int) -> str:
    return (f'<img src="images/{index}{suffix}.png" width="{width}" alt="{what} of image {index}" '
            'loading="lazy">')


def _row(i: int, arrays: dict, game: dict, width: int) -> str:
    """The table row of the ``i``-th image of ``saliency.npz``."""
    index, name, target = int(arrays["indices"][i]), str(arrays["names"][i]), int(arrays["targets"][i])
    score = float(arrays["clean_scores"][i]) if "clean_scores" in arrays else float("nan")
    label = f" (label {int(arrays['labels'][i])})" if "labels" in arrays else ""
    scored = game.get("rows", {}).get(index)
    ins, dele, overall = ((float(scored[0].mean()), float(scored[1].mean()), scored[2]) if scored
                          else (float("nan"),) * 3)
    curves = _curves_svg(game["ratios"], scored[0], scored[1]) if scored else ""
    return (f'<tr data-index="{index}" data-score="{score}" data-ins="{ins}" data-del="{dele}" '
            f'data-overall="{overall}"><td>{index}</td><td>{html.escape(name)}</td>'
            f'<td>{_img(index, "", "picture", width)}</td><td>{_img(index, "_map", "map", width)}</td>'
            f'<td>{target}{label}</td><td>{_cell(score)}</td><td>{_cell(ins)}</td><td>{_cell(dele)}</td>'
            f'<td>{_cell(overall)}</td><td>{curves}</td></tr>')


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }}
img {{ image-rendering: pixelated; display: block; }}
button {{ font: inherit; cursor: pointer; }}
polyline {{ fill: none; stroke-width: 1.5; }} .ins {{ stroke: #1a8a4a; }} .del {{ stroke: #c8322b; }}
</style></head><body>
<h1>{title}</h1>
<p>{summary}</p>
<table><thead><tr><th><button data-key="index">#</button></th><th>name</th><th>image</th><th>map</th>
<th>class</th><th><button data-key="score">p(class)</button></th>
<th><button data-key="ins">Ins</button></th><th><button data-key="del">Del</button></th>
<th><button id="sort-overall" data-key="overall">Overall</button></th>
<th>game: <span class="ins">insertion</span> / <span class="del">deletion</span></th></tr></thead>
<tbody>
{rows}
</tbody></table>
<pre id="check"></pre>
<script>
const body = document.querySelector("tbody");
function sortRows(button) {{   // first click: descending; rows without the value last
  const key = button.dataset.key, sign = button.dataset.order === "desc" ? 1 : -1;
  button.dataset.order = sign < 0 ? "desc" : "asc";
  const value = row => parseFloat(row.dataset[key]);
  body.append(...Array.from(body.rows).sort((a, b) =>
    (isNaN(value(a)) - isNaN(value(b))) || sign * (value(a) - value(b))));
}}
document.querySelectorAll("th button").forEach(button => button.onclick = () => sortRows(button));
if (new URLSearchParams(location.search).has("check")) {{   // self-test: load all, sort by Overall, report
  const images = Array.from(document.images);
  images.forEach(img => img.loading = "eager");
  // wait for each image's load event (fetches hold the browser's virtual time; decode() does not)
  const loaded = img => img.complete ? Promise.resolve() : new Promise(done => {{
    img.addEventListener("load", done); img.addEventListener("error", done); }});
  Promise.all(images.map(loaded)).then(() => {{
    const order = () => Array.from(body.rows, row => Number(row.dataset.index));
    const before = order();
    document.getElementById("sort-overall").click();
    document.getElementById("check").textContent = JSON.stringify({{images: images.length,
      shown: images.filter(img => img.complete && img.naturalWidth > 0).length, before, after: order()}});
  }});
}}
</script>
</body></html>
"""


def _summary(config: dict, arrays: dict, game: dict) -> str:
    parts = [f"{len(arrays['indices'])} images of {config['source']['path']}", f"model {config['model']}",
             f"targets: {config['targets']}"]
    if "iterations" in config:
        parts.append(f"{config['iterations']} iterations")
    if game:
        overall = np.array([row[2] for row in game["rows"].values()])
        se = overall.std(ddof=1) / np.sqrt(len(overall)) if len(overall) > 1 else float("nan")
        parts.append(f"deletion game: mean Overall {overall.mean():.3f} ± {se:.3f} over "
                     f"{len(overall)} images")
    else:
        parts.append(f"no {GAME} (run sas-fast evaluate for the game's scores)")
    return html.escape(" · ".join(parts))


def write_gallery(run_dir, out=None, *, limit: int | None = None, progress: bool | None = None) -> Path:
    """Write the gallery of an ``attribute-dataset`` output folder.

    Args:
        run_dir: the output folder of ``sas-fast attribute-dataset`` (``saliency.npz`` is
            merged into it first if it is missing).
        out: folder of the page (``index.html`` and ``images/``); default ``run_dir/gallery``.
        limit: show only the first ``limit`` images in dataset order; None: all.
        progress: progress bar while the PNGs are written (None: only on a terminal).

    Returns:
        The path of ``index.html``.

    Example::

        sas_fast.gallery.write_gallery("runs/c10")     # then open runs/c10/gallery/index.html
    """
    run_dir = Path(run_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetRunError(f"limit must be a positive integer or None, got {limit!r}")
    manifest = read_manifest(run_dir) if run_dir.is_dir() else None
    if manifest is None:
        raise DatasetRunError(f"no readable {MANIFEST} in {run_dir}: not an attribute-dataset output folder")
    if not (run_dir / MERGED).exists():
        merge(run_dir)
    arrays = _read_npz(run_dir / MERGED, SALIENCY_KEYS)
    game = _game_by_index(run_dir / GAME, arrays["indices"])
    out = Path(out) if out is not None else run_dir / "gallery"
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetRunError(f"cannot create gallery folder {out}: {err.strerror or err}") from err
    view = _viewer(manifest["config"])
    count = len(arrays["indices"]) if limit is None else min(limit, len(arrays["indices"]))
    width = min(224, max(128, arrays["saliency"].shape[-1]))
    rows = []
    bar = tqdm(range(count), desc="gallery", unit="img", disable=None if progress is None else not progress)
    for i in bar:
        index = int(arrays["indices"][i])
        picture, saliency = view(index), arrays["saliency"][i].astype(np.float32)
        save_png(out / "images" / f"{index}.png", (255 * picture).round().astype(np.uint8))
        save_png(out / "images" / f"{index}_map.png", overlay(picture, saliency))
        rows.append(_row(i, arrays, game, width))
    method = manifest["config"].get("method", "sas")
    title = html.escape(f"{'SaS' if method == 'sas' else method} maps: {run_dir.resolve().name}")
    page = PAGE.format(title=title, summary=_summary(manifest["config"], arrays, game), rows="\n".join(rows))
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def run_gallery(args) -> int:
    print(f"gallery -> {write_gallery(args.dir, args.out, limit=args.limit)}")
    return 0


def add_cli_arguments(subparsers) -> None:
    """Add the ``gallery`` sub-command to an argparse sub-parser set."""
    p = subparsers.add_parser("gallery", help="static HTML page of an attribute-dataset folder: images, "
                                              "map overlays, classes, scores, game curves; sortable",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="output folder of attribute-dataset")
    p.add_argument("--out", default=None, help="folder of the page (default DIR/gallery)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (default: all)")
    p.set_defaults(func=run_gallery)
