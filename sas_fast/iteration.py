"""One SaS iteration: zero the gradient, :func:`~sas_fast.schedule.sas_step`, Adam step, keep the
thresholds for the next solve's warm start. Eager, or replayed from a CUDA graph.

With ``config.cuda_graph`` the first :data:`WARMUP` iterations run eagerly on a side stream
(Triton compiles, cuDNN picks its algorithms, the allocator settles); the next call captures one
whole iteration (schedule, masks, model forward and backward, Adam, warm-start copy) into a
``torch.cuda.CUDAGraph`` and replays it, and every later call is one ``replay()``: a few
launches instead of hundreds, so a small image is no longer launch-bound. The step and the
model must then not synchronise with the host (no ``.item()``, no data-dependent Python
branches); every iteration has the same shapes, so one capture serves the whole run.
"""
from __future__ import annotations

import torch

from .config import SaSConfig
from .schedule import Objective, StepConstants, StepResult, sas_step

#: eager iterations before the capture (PyTorch's CUDA-graph notes ask for a few on a side stream)
WARMUP = 3


class IterationRunner:
    """``runner()`` runs the next iteration on ``premask`` (``B x 1 x (H+2r) x (W+2r)``, a leaf
    that requires grad) and returns its :class:`StepResult`.

    Under ``config.cuda_graph`` the result after the warm-up lives in the graph's static
    buffers and is overwritten by the next call: copy what you keep.
    """

    def __init__(self, premask: torch.Tensor, pyramid: torch.Tensor, objective: Objective,
                 config: SaSConfig):
        if config.cuda_graph and (not premask.is_cuda or config.backend != "triton"):
            raise ValueError(f"cuda_graph=True needs CUDA images and backend 'triton', got device "
                             f"{premask.device.type!r} and backend {config.backend!r}")
        self.premask, self.pyramid, self.objective, self.config = premask, pyramid, objective, config
        self.optimizer = torch.optim.Adam([premask], lr=config.lr, capturable=config.cuda_graph,
                                          fused=premask.device.type in ("cpu", "cuda"))
        self.constants = StepConstants(premask, objective, config)  # built once per run
        self.thresholds = None
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
        self.optimizer.zero_grad(set_to_none=True)
        result = sas_step(self.premask, self.pyramid, self.objective, self.config, self.thresholds,
                          constants=self.constants)
        self.optimizer.step()
        self.thresholds = result.thresholds
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
