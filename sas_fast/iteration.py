"""One SaS iteration: draw the areas (:class:`~sas_fast.sampling.AreaSampler`), zero the
gradient, :func:`~sas_fast.step.sas_step` (with ``config.control_variate`` its per-area
gradients combined by :class:`~sas_fast.control_variate.AreaGradientTable`), Adam step
(learning rate ``config.lr`` times ``config.lr_factor(i)`` at iteration i, betas
``config.betas``; in the first ``config.coarse_iterations()`` iterations the gradient averaged
over tiles of ``coarse_block`` x ``coarse_block`` pixels, :func:`block_mean`; with
``sharpness_start`` the masks' sharpness of iteration i is ``config.sharpness_at(i)``), keep
the thresholds for the next solve's warm start. Eager, or replayed from a CUDA graph.

With ``config.cuda_graph`` the first :data:`WARMUP` iterations run eagerly on a side stream
(Triton compiles, cuDNN picks its algorithms, the allocator settles); the next call captures one
whole iteration (schedule, masks, model forward and backward, Adam, warm-start copy) into a
``torch.cuda.CUDAGraph`` and replays it, and every later call is one ``replay()``: a few
launches instead of hundreds, so a small image is no longer launch-bound. The step and the
model must then not synchronise with the host (no ``.item()``, no data-dependent Python
branches); every iteration has the same shapes, so one capture serves the whole run.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .config import SaSConfig
from .control_variate import AreaGradientTable
from .sampling import AreaSampler
from .step import Objective, StepConstants, StepResult, mask_areas, sas_step

#: eager iterations before the capture (PyTorch's CUDA-graph notes ask for a few on a side stream)
WARMUP = 3


def block_mean(grad: torch.Tensor, block: int) -> torch.Tensor:
    """``grad`` (``... x H x W``) with each ``block x block`` tile (from the top left; the last row
    and column of tiles may be cut by the border) replaced by its mean.

    Adam normalises each coordinate's step, so Adam on the pre-mask with this gradient takes the
    same steps (up to Adam's ``eps``) as Adam on a ``block``-times coarser offset ``Q`` of the
    pre-mask (the pre-mask its start plus ``Q`` repeated over each tile, whose gradient is the
    tile's sum; tests/test_coarse_phase.py): the coarse phase optimises a lower-resolution
    pre-mask, then the fine phase refines every pixel.
    """
    h, w = grad.shape[-2:]
    mean = F.avg_pool2d(grad, block, ceil_mode=True)      # a cut tile: the mean of its pixels in the image
    return mean.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :h, :w].contiguous()


class IterationRunner:
    """``runner()`` runs the next iteration on ``premask`` (``B x 1 x (H+2r) x (W+2r)``, a leaf
    that requires grad) and returns its :class:`StepResult`.

    Under ``config.cuda_graph`` the result after the warm-up lives in the graph's static
    buffers and is overwritten by the next call: copy what you keep. ``index`` holds the
    indices (into the K - 2 inner areas) of the areas the last call evaluated.
    """

    def __init__(self, premask: torch.Tensor, pyramid: torch.Tensor, objective: Objective,
                 config: SaSConfig):
        if config.cuda_graph and (not premask.is_cuda or config.backend != "triton"):
            raise ValueError(f"cuda_graph=True needs CUDA images and backend 'triton', got device "
                             f"{premask.device.type!r} and backend {config.backend!r}")
        if config.cuda_graph and (config.area_samples is not None or config.lr_decay != "none"):
            raise ValueError("cuda_graph=True replays one fixed iteration: it needs area_samples=None and "
                             f"lr_decay='none' (preset 'paper-cifar', 'paper-imagenet' or 'fast-imagenet'), "
                             f"got {config.area_samples} and {config.lr_decay!r}")
        self.premask, self.pyramid, self.objective, self.config = premask, pyramid, objective, config
        self.optimizer = torch.optim.Adam([premask], lr=config.lr, betas=tuple(config.betas),
                                          capturable=config.cuda_graph,
                                          fused=premask.device.type in ("cpu", "cuda"))
        self.decay = None
        if config.lr_decay != "none":
            self.decay = torch.optim.lr_scheduler.LambdaLR(self.optimizer, config.lr_factor)
        self.sampler = AreaSampler(config)
        self.table = AreaGradientTable(self.sampler.inner, self.sampler.stratum) if config.control_variate else None
        self.inner_areas = mask_areas(config.num_masks, premask.dtype, premask.device)[1:-1]
        self.index = None
        self.seen = torch.zeros(self.sampler.inner, dtype=torch.bool)   # areas solved before (host)
        self.thresholds = None                                           # B x (K - 2) warm starts
        self.constants = StepConstants(premask, objective, config)  # built once per run
        self.calls = 0
        self.graph = self.static = None
        # warm-up and capture on one side stream: cuBLAS / cuDNN set up their per-stream state
        # (handles, workspaces) during the warm-up, not in the middle of the capture
        self.stream = torch.cuda.Stream(device=premask.device) if config.cuda_graph else None

    def __call__(self) -> StepResult:
        self.calls += 1
        if not self.config.cuda_graph:
            return self._eager()
        if self.graph is None:
            warm_up = self.calls <= WARMUP
            main = torch.cuda.current_stream(self.premask.device)
            self.stream.wait_stream(main)
            with torch.cuda.stream(self.stream):
                if warm_up:
                    result = self._eager()
                else:
                    self._capture()
            main.wait_stream(self.stream)
            if warm_up:
                return result
        self.graph.replay()
        return self.static

    def _eager(self) -> StepResult:
        self.index = self.sampler()
        if self.index.numel() == self.sampler.inner:        # every area: no gather, no scatter
            areas, warm = None, self.thresholds
        else:
            areas = self.inner_areas[self.index.to(self.inner_areas.device)]
            warm = self.thresholds[:, self.index] if bool(self.seen[self.index].all()) else None
        self.optimizer.zero_grad(set_to_none=True)
        combine = None if self.table is None else lambda grads: self.table(self.index, grads)
        config = self.config
        if config.sharpness_start is not None:
            config = dataclasses.replace(config, sharpness=config.sharpness_at(self.calls - 1))
        result = sas_step(self.premask, self.pyramid, self.objective, config, warm, areas,
                          constants=self.constants, combine=combine)
        if self.calls <= config.coarse_iterations():
            self.premask.grad = block_mean(self.premask.grad, config.coarse_block)
        self.optimizer.step()
        if self.decay is not None:
            self.decay.step()
        if areas is None:
            self.thresholds = result.thresholds
        else:
            if self.thresholds is None:
                self.thresholds = result.thresholds.new_zeros(result.thresholds.shape[0], self.sampler.inner)
            self.thresholds[:, self.index] = result.thresholds
            self.seen[self.index] = True
        return result

    def _capture(self) -> None:
        """Record one iteration (not run yet); the warm start reads and writes one static
        thresholds buffer."""
        self.thresholds = self.thresholds.clone()
        self.optimizer.zero_grad(set_to_none=True)   # the captured backward then writes the grad
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.stream):
            self.static = sas_step(self.premask, self.pyramid, self.objective, self.config,
                                   self.thresholds, constants=self.constants)
            self.optimizer.step()
            self.thresholds.copy_(self.static.thresholds)
