"""Pictures people can look at: heat-map overlays (needs matplotlib, in the ``eval``/``demo`` extras)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F


def resize_saliency(saliency: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``H x W`` (or ``B x H x W``) saliency to ``height x width``."""
    s = saliency.detach().float().cpu()
    squeeze = s.dim() == 2
    s = F.interpolate(s.reshape(-1, 1, *s.shape[-2:]), size=(height, width), mode="bilinear",
                      align_corners=False)[:, 0]
    return s[0] if squeeze else s


def overlay(image: np.ndarray, saliency, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``H x W x 3`` image in [0, 1] (or uint8) blended with a colour-mapped ``h x w`` saliency in
    [0, 1], resized to the image: ``(1 - alpha) image + alpha cmap(saliency)``, uint8 ``H x W x 3``."""
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    sal = resize_saliency(torch.as_tensor(np.asarray(saliency)), *img.shape[:2]).numpy()
    heat = colormaps[cmap](np.clip(sal, 0, 1))[..., :3]
    return (255 * np.clip((1 - alpha) * img[..., :3] + alpha * heat, 0, 1)).round().astype(np.uint8)


def save_png(path, rgb: np.ndarray) -> None:
    """Write an ``H x W x 3`` uint8 array as a PNG of exactly that size."""
    import matplotlib.image

    matplotlib.image.imsave(str(path), rgb)


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path, title: str = "", rect=(0, 0, 1, 1)) -> None:
    """Title, tight layout within ``rect`` (figure fractions), write the PNG, free the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_game_curves(results: dict, path, title: str = "") -> None:
    """Figure-4 style: mean insertion and deletion curves (target probability vs fraction of
    pixels kept / removed) of each method; ``results`` maps a name to a ``GameResult``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, res in results.items():
        r = res.ratios.numpy()
        axes[0].plot(r, res.insertion.mean(0).numpy(), marker="o", ms=3, label=f"{name} ({res.ins:.3f})")
        axes[1].plot(r, res.deletion.mean(0).numpy(), marker="o", ms=3, label=f"{name} ({res.dele:.3f})")
    for ax, what in zip(axes, ("Insertion: fraction kept (higher is better)",
                               "Deletion: fraction removed (lower is better)")):
        ax.set_xlabel(what)
        ax.set_ylabel("p(target)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(plt, fig, path, title)


def plot_frontier(panels: dict, path, title: str = "") -> None:
    """Quality per compute: Overall (mean ± se) against model image-passes per image, one panel
    per setting. ``panels`` maps a panel title to ``{curve name: [(passes, mean, se), ...]}``.
    One legend below the panels (the curves share names across panels); an x label is left
    out when another within 20 % is kept, the one more curves share (432, 448 and 450 share a
    label; so do EP's 800 and the SaS runs' 900, labelled 900: the legend names EP's passes)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    legend = {}
    for ax, (name, curves) in zip(axes[0], panels.items()):
        for label, points in curves.items():
            x, y, e = (np.array(v, dtype=float) for v in zip(*sorted(points)))
            legend.setdefault(label, ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, label=label))
        ax.set_xscale("log")
        shared = Counter(p for points in curves.values() for p, _, _ in points)
        ticks = []
        for p in sorted(shared, key=lambda p: (-shared[p], p)):
            if all(not (p / 1.2 < t < p * 1.2) for t in ticks):
                ticks.append(p)
        ticks.sort()
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks], fontsize=7, rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("model image-passes per image")
        ax.set_ylabel("Overall (Ins - Del)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 8), fontsize=8)
    _save(plt, fig, path, title, rect=(0, 0.1, 1, 1))           # the legend below the panels


def plot_score_profiles(trace, path, image: int = 0, title: str = "") -> None:
    """Figure-3 style: the score of every mask (x: mask area) at the recorded iterations,
    one panel per loss mode, from a :class:`sas_fast.SaSTrace`."""
    plt = _pyplot()
    modes = list(trace.scores)
    fig, axes = plt.subplots(1, len(modes), figsize=(4.5 * len(modes), 3.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, mode in zip(axes[0], modes):
        for j, it in enumerate(trace.iterations):
            ax.plot(trace.areas.numpy(), trace.scores[mode][j, image].numpy(),
                    color=cmap(j / max(1, len(trace.iterations) - 1)), label=f"iteration {it}")
        ax.set_xlabel(f"mask area a_k ({'kept' if mode == 'insertion' else 'removed'})")
        ax.set_ylabel("score (logit)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(plt, fig, path, title)


def attribution_grid(images: list, rows: list, columns: list, path, col_titles=None,
                     row_titles=None) -> None:
    """A grid of panels: each row an image (``H x W x 3`` in [0, 1]) shown first, then its
    saliency maps (``rows[i][j]``, ``h x w``) as overlays; ``columns`` names the maps."""
    plt = _pyplot()
    n_cols = 1 + len(columns)
    fig, axes = plt.subplots(len(images), n_cols, figsize=(2.2 * n_cols, 2.2 * len(images)),
                             squeeze=False)
    for i, image in enumerate(images):
        panels = [np.asarray(image)] + [overlay(image, s) for s in rows[i]]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title((["image"] + list(col_titles or columns))[j], fontsize=9)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=9)
    _save(plt, fig, path)
