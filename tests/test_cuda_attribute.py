"""Whole SaS runs on a GPU: the CUDA-graph iteration against eager Triton, and Triton against the
reference. Skipped without CUDA; ``benchmarks/speed/gpu_check.sh`` runs them on a GPU machine."""
import pytest
import torch
from torch import nn

from sas_fast import attribute
from sas_fast.models import resnet8

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cnn() -> nn.Module:
    """A seeded 4-layer CNN with BatchNorm and a second (unused) head, on the GPU."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).cuda()


def _images(b: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(1)).cuda()


@pytest.mark.parametrize("b,h,w,mode", [(1, 32, 32, "both"), (3, 29, 40, "insertion")])
def test_cuda_graph_replays_the_eager_iterations(b, h, w, mode):
    """Same saliency, losses and score profiles with and without the graph (12 iterations:
    3 eager warm-up, 1 capture + replay, 8 replays)."""
    model, x = _cnn(), _images(b, h, w)
    runs = [attribute(model, x, [1, 2, 3][:b], mode=mode, iterations=12, backend="triton",
                      cuda_graph=graph, return_trace=True, trace_iterations=(2, 3, 4, 11), progress=False,
                      precision="fp32")
            for graph in (False, True)]
    (eager, eager_trace), (graphed, graphed_trace) = runs
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-4)
    torch.testing.assert_close(graphed_trace.loss, eager_trace.loss, rtol=1e-4, atol=1e-4)
    for m in eager_trace.scores:
        torch.testing.assert_close(graphed_trace.scores[m], eager_trace.scores[m], rtol=1e-4, atol=1e-4)
    assert not torch.equal(graphed_trace.loss[4], graphed_trace.loss[11])   # replays moved on


def test_cuda_graph_bf16_micro_batches_and_feature_saliency():
    model, x = _cnn(), _images(2, 32, 32)
    for options in ({"precision": "bf16"}, {"max_batch": 7}, {"layer": model[3]}):
        eager, graphed = (attribute(model, x, 4, iterations=8, backend="triton", cuda_graph=g,
                                    progress=False, **{"precision": "fp32", **options})
                           for g in (False, True))
        assert torch.isfinite(graphed).all()
        torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-3, msg=f"options {options}")


def test_cuda_graph_leaves_the_model_as_found():
    model = _cnn().train()
    model[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="train mode"):
        attribute(model, _images(1, 32, 32), 0, iterations=6, backend="triton", cuda_graph=True,
                  progress=False)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_triton_attribution_follows_the_reference_on_resnet8():
    """The paper's ResNet8 (seeded weights), 50 iterations, both backends in float64 (in float32
    the run itself amplifies rounding: see tests/test_attribute.py and benchmarks/RESULTS.md)."""
    torch.manual_seed(0)
    model = resnet8().cuda().double().eval()
    x = _images(2, 32, 32).double()
    out = {backend: attribute(model, x, [3, 7], iterations=50, backend=backend, progress=False)
           for backend in ("reference", "triton")}
    assert (out["triton"] - out["reference"]).abs().max() < 1e-6
