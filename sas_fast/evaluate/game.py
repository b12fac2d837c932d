"""The deletion / insertion game of docs/SPEC.md section 5 (how the paper scores attributions).

For each image and ratio ``p`` in ``ratios`` (default ``0, 0.1, ..., 1``) rank the pixels by
the saliency (descending; ties by pixel index, a stable sort), take the top
``n = floor(p H W)``, and score the softmax probability of the target class on

- the insertion image: only the top ``n`` kept, the rest removed;
- the deletion image: the top ``n`` removed;

removed pixels filled by Noisy Linear Imputation (:func:`sas_fast.evaluate.nli.nli_impute`).
``Ins`` / ``Del`` = mean over images and ratios; ``Overall = Ins - Del`` (higher is better).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_images, check_seed, guarded_model, is_int, is_real, model_logits, resolve_target
from .nli import nli_impute


@dataclass
class GameResult:
    """Curves of the game. ``ratios`` ``[R]``; ``insertion``, ``deletion`` ``B x R`` target
    probabilities; ``target`` ``[B]``. Scores are means over images of the per-image means over
    ratios, with standard errors over images (``std / sqrt(B)``, NaN for one image)."""

    ratios: torch.Tensor
    insertion: torch.Tensor
    deletion: torch.Tensor
    target: torch.Tensor

    @property
    def ins(self) -> float:
        return float(self.insertion.mean())

    @property
    def dele(self) -> float:
        return float(self.deletion.mean())

    @property
    def overall(self) -> float:
        return self.ins - self.dele

    @property
    def ins_se(self) -> float:
        return _se(self.insertion.mean(1))

    @property
    def dele_se(self) -> float:
        return _se(self.deletion.mean(1))

    @property
    def per_image_overall(self) -> torch.Tensor:
        """``[B]``: each image's Ins - Del."""
        return self.insertion.mean(1) - self.deletion.mean(1)

    @property
    def overall_se(self) -> float:
        return _se(self.per_image_overall)

    def paired_gap(self, other: "GameResult") -> tuple:
        """``(mean, se)`` over images of this Overall minus ``other``'s, on the same images."""
        if other.insertion.shape != self.insertion.shape:
            raise ValueError("paired_gap needs results on the same images")
        gap = self.per_image_overall - other.per_image_overall
        return float(gap.mean()), _se(gap)


def _se(values: torch.Tensor) -> float:
    if values.numel() < 2:
        return float("nan")
    return float(values.double().std() / math.sqrt(values.numel()))


def pixel_ranks(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B x h x w`` saliency -> ``B x H x W`` long ranks (0 = most salient).

    The saliency is bilinearly resized to ``size`` (``align_corners=False``) if needed;
    ties are broken by the flat pixel index (stable sort on ``-saliency``).
    """
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() != 3 or 0 in saliency.shape[1:]:
        raise ValueError(f"saliency must be B x H x W with H, W >= 1, got shape {tuple(saliency.shape)}")
    s = saliency.detach().float()
    if not bool(torch.isfinite(s).all()):
        raise ValueError("saliency contains NaN or Inf")
    if tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    order = torch.sort(-s.flatten(1), dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks.view(-1, *size)


def _job_noise(seed: int, image: int, mode: int, ratio: int, shape) -> torch.Tensor:
    """Standard normal noise of one game image, a function of (seed, image, mode, ratio) only."""
    state = np.random.SeedSequence([seed, image, mode, ratio]).generate_state(2, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) >> 1)
    return torch.randn(shape, generator=generator)


def deletion_game(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, target=None,
                  ratios=None, batch_size: int = 64, noise: float = 0.01, seed: int = 0,
                  solver: str = "auto", image_ids=None) -> GameResult:
    """Play the insertion and deletion game of docs/SPEC.md section 5.

    Args:
        model: classifier ``B x C x H x W -> B x classes`` logits; evaluated in eval mode
            without gradients and left exactly as found.
        images: ``B x C x H x W`` floating point, finite, in the model's input space (imputation
            happens there).
        saliency: ``B x h x w`` (or ``B x 1 x h x w``), resized bilinearly to ``H x W`` if needed.
        target: class per image (int, list, LongTensor[B]): the label; None = the model's
            top-1 class on the clean image.
        ratios: the fractions ``p`` in [0, 1], at least one (default ``0, 0.1, ..., 1``);
            ``n = floor(p H W)`` pixels.
        batch_size: game images imputed and classified at once (bounds memory).
        noise: std of the imputation noise; the noise of each game image depends only on
            ``(seed, image id, mode, ratio index)``, not on ``batch_size``.
        seed: an integer in ``[0, 2**64 - 1]``.
        solver: NLI solver, see :func:`sas_fast.evaluate.nli.nli_impute`.
        image_ids: B non-negative integers keying each image's noise (default: its position
            in ``images``); give dataset indices and an image scores the same in any batch.

    Returns:
        :class:`GameResult` with ``B x R`` insertion and deletion curves (float64, CPU).
    """
    check_images(images)
    b, c, h, w = images.shape
    if not isinstance(saliency, torch.Tensor) or saliency.dim() < 1 or saliency.shape[0] != b:
        raise ValueError(f"saliency must be a tensor of {b} maps, got "
                         f"{tuple(getattr(saliency, 'shape', ()))}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (is_real(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    seed = check_seed(seed)
    given = ratios
    try:
        ratios = torch.linspace(0, 1, 11, dtype=torch.float64) if ratios is None else \
            torch.as_tensor(ratios, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        ratios = torch.empty(0)
    if ratios.numel() < 1 or not bool(((ratios >= 0) & (ratios <= 1)).all()):
        raise ValueError(f"ratios must be a non-empty list of values in [0, 1], got {given!r}")
    ids = list(range(b)) if image_ids is None else \
        image_ids.tolist() if isinstance(image_ids, (torch.Tensor, np.ndarray)) else list(image_ids)
    if len(ids) != b or not all(is_int(i) and i >= 0 for i in ids):
        raise ValueError(f"image_ids must be {b} non-negative integers, got {image_ids!r}")
    counts = [math.floor(float(p) * h * w + 1e-6) for p in ratios]
    images = images.detach()
    ranks = pixel_ranks(saliency.to(images.device), (h, w))
    jobs = [(i, mode, r) for i in range(b) for mode in (0, 1) for r in range(len(counts))]
    scores = torch.zeros(b, 2, len(counts), dtype=torch.float64)
    with guarded_model(model), torch.no_grad():
        logits = torch.cat([model_logits(model, images[s:s + batch_size])
                            for s in range(0, b, batch_size)])
        target = resolve_target(target, logits)
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s:s + batch_size]
            idx = torch.tensor([i for i, _, _ in chunk], device=images.device)
            n = torch.tensor([counts[r] for _, _, r in chunk], device=images.device)
            top = ranks[idx] < n[:, None, None]
            insertion = torch.tensor([mode == 0 for _, mode, _ in chunk], device=images.device)
            keep = torch.where(insertion[:, None, None], top, ~top)
            game = nli_impute(images[idx], keep, noise=0.0, solver=solver)
            if noise:
                eps = torch.stack([_job_noise(seed, ids[i], mode, r, (c, h, w)) for i, mode, r in chunk])
                game = game + (noise * eps).to(game) * ~keep[:, None]
            prob = torch.softmax(model(game).float(), dim=-1).gather(1, target[idx][:, None])[:, 0]
            for (i, mode, r), v in zip(chunk, prob.double().cpu()):
                scores[i, mode, r] = v
    return GameResult(ratios=ratios, insertion=scores[:, 0], deletion=scores[:, 1],
                      target=target.cpu())
