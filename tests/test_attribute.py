"""sas_fast.attribute end to end: planted evidence, batch consistency, feature saliency,
micro-batching, traces, bad input and the model left exactly as found."""
import pytest
import torch
from torch import nn

import sas_fast
from sas_fast import SaS, attribute

REGION = (slice(4, 14), slice(17, 27))           # rows, cols of the planted evidence in 32 x 32


class TextureDetector(nn.Module):
    """Class 0 logit = high-frequency energy inside REGION (Laplacian^2, summed); class 1 a
    constant. Blurring (SaS's masking) destroys exactly that texture, so the evidence for
    class 0 is in REGION only, whatever the rest of the image holds."""

    def __init__(self):
        super().__init__()
        lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
        self.highpass = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.highpass.weight.data = lap.expand(1, 3, 3, 3).clone() / 3
        self.register_buffer("region", torch.zeros(1, 1, 32, 32))
        self.region[..., REGION[0], REGION[1]] = 1
        self.head = nn.Linear(1, 2)
        self.head.weight.data = torch.tensor([[1.0], [0.0]])
        self.head.bias.data = torch.tensor([0.0, 5.0])
        self.dropout = nn.Dropout(0.5)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x):
        energy = (self.highpass(x).square() * self.region).mean(dim=(1, 2, 3), keepdim=True)
        feat = self.norm(energy.view(-1, 1, 1, 1)).view(-1, 1)
        return self.head(self.dropout(feat))


def textured_images(b=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 32, 32, generator=g)


@pytest.fixture
def model():
    return TextureDetector().eval()


def region_recall(saliency):
    """Fraction of the top-|REGION| pixels that fall inside REGION, per image."""
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[REGION] = True
    n = int(mask.sum())
    top = saliency.flatten(1).topk(n, dim=1).indices
    return mask.flatten()[top].float().mean(1)


@pytest.mark.parametrize("mode", ["insertion", "deletion", "both"])
def test_planted_evidence_is_ranked_first(model, mode):
    sal = attribute(model, textured_images(), 0, mode=mode, iterations=40, backend="reference")
    assert sal.shape == (2, 32, 32) and sal.dtype == torch.float32
    assert sal.min() >= 0 and sal.max() <= 1
    assert (region_recall(sal) > 0.7).all(), region_recall(sal)


def test_batch_equals_each_image_alone(model):
    images = textured_images(3) * torch.tensor([1.0, 0.5, 2.0]).view(3, 1, 1, 1)
    together = attribute(model, images, 0, iterations=8)
    for i in range(3):
        alone = attribute(model, images[i:i + 1], 0, iterations=8)
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=0)


def test_micro_batches_give_identical_results(model):
    images = textured_images()
    full = attribute(model, images, 0, iterations=5)
    micro = attribute(model, images, 0, iterations=5, max_batch=7)
    torch.testing.assert_close(full, micro, atol=1e-6, rtol=0)


def test_feature_saliency_runs_and_differs_from_class_saliency():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    images = textured_images()
    cls = attribute(net, images, 1, iterations=10)
    feat = attribute(net, images, iterations=10, layer=net[1])
    by_name = attribute(net, images, iterations=10, layer="1")
    assert feat.shape == cls.shape and torch.isfinite(feat).all()
    assert (feat - cls).abs().max() > 0.1
    torch.testing.assert_close(feat, by_name)


def test_trace_records_score_profiles(model):
    images = textured_images()
    sal, trace = attribute(model, images, 0, iterations=6, num_masks=5, return_trace=True,
                           trace_iterations=[0, 5])
    assert trace.iterations == [0, 5]
    assert set(trace.scores) == {"insertion", "deletion"}
    ins = trace.scores["insertion"]
    assert ins.shape == (2, 2, 5) and trace.loss.shape == (6, 2)
    torch.testing.assert_close(ins[0, :, -1], model(images)[:, 0])      # fully-ON mask: the image
    torch.testing.assert_close(trace.scores["deletion"][0, :, 0], ins[0, :, -1])
    assert (ins[-1].mean() > ins[0].mean())          # optimisation raised the insertion scores


def test_sas_object_is_captum_shaped(model):
    explainer = SaS(model, preset="paper-cifar", iterations=3)
    out = explainer.attribute(textured_images(), target=torch.tensor([0, 1]))
    assert out.shape == (2, 1, 32, 32)
    assert explainer.config.iterations == 3 and sas_fast.PRESETS["paper-imagenet"].iterations == 800


def test_non_square_float64_and_additional_forward_args():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1).double()

        def forward(self, x, scale):
            return self.conv(x).mean(dim=(2, 3)) * scale.view(-1, 1)

    images = torch.randn(2, 3, 20, 33, dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sal = attribute(Scaled(), images, [0, 3], iterations=3, additional_forward_args=(scale,))
    assert sal.shape == (2, 20, 33) and sal.dtype == torch.float32


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
             for m in model.modules()], [p.grad for p in model.parameters()])


BAD_CALLS = {
    "3-D images": lambda m: attribute(m, torch.randn(3, 32, 32), 0),
    "integer images": lambda m: attribute(m, torch.ones(1, 3, 32, 32, dtype=torch.long), 0),
    "NaN": lambda m: attribute(m, textured_images().index_fill(2, torch.tensor([3]), float("nan")), 0),
    "Inf": lambda m: attribute(m, textured_images().index_fill(3, torch.tensor([3]), float("inf")), 0),
    "smaller than window": lambda m: attribute(m, torch.randn(1, 3, 32, 32), 0, window=33),
    "target out of range": lambda m: attribute(m, textured_images(), 2, iterations=1),
    "negative target": lambda m: attribute(m, textured_images(), [0, -1], iterations=1),
    "target wrong length": lambda m: attribute(m, textured_images(), [0, 1, 0], iterations=1),
    "float target": lambda m: attribute(m, textured_images(), torch.tensor([0.0, 1.0]), iterations=1),
    "unknown mode": lambda m: attribute(m, textured_images(), 0, mode="sideways"),
    "layer outside model": lambda m: attribute(m, textured_images(), 0, layer=nn.ReLU()),
    "unknown layer name": lambda m: attribute(m, textured_images(), 0, layer="nope"),
    "num_masks < 3": lambda m: attribute(m, textured_images(), 0, num_masks=2),
    "iterations < 1": lambda m: attribute(m, textured_images(), 0, iterations=0),
    "unknown option": lambda m: attribute(m, textured_images(), 0, learning_rate=0.1),
    "unknown backend": lambda m: attribute(m, textured_images(), 0, backend="gpu-magic"),
    "CUDA graph of CPU images": lambda m: attribute(m, textured_images(), 0, cuda_graph=True),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_input_raises_and_leaves_model_as_found(name):
    model = TextureDetector().train()
    model.head.weight.requires_grad_(False)
    model.highpass.register_forward_hook(lambda *a: None)
    before = _state(model)
    with pytest.raises(ValueError):
        BAD_CALLS[name](model)
    assert _state(model) == before


def test_train_mode_model_is_evaluated_in_eval_mode_and_restored():
    model = TextureDetector().train()
    model.norm.train(False)
    model.head.bias.requires_grad_(False)
    before = _state(model)
    with pytest.warns(UserWarning, match="train mode"):
        sal = attribute(model, textured_images(), 0, iterations=3)
    assert _state(model) == before
    eval_sal = attribute(TextureDetector().eval(), textured_images(), 0, iterations=3)
    torch.testing.assert_close(sal, eval_sal)        # dropout and batch statistics were off


def test_bf16_precision_agrees_with_fp32(model):
    images = textured_images()
    fp32 = attribute(model, images, 0, iterations=10, precision="fp32")
    bf16 = attribute(model, images, 0, iterations=10, precision="bf16")
    corr = torch.corrcoef(torch.stack([fp32.flatten(), bf16.flatten()]))[0, 1]
    assert corr > 0.95 and (region_recall(bf16) > 0.5).all()


@pytest.mark.parametrize("backend,batch,iterations", [("cpp", 2, 20), ("triton", 1, 4)])  # interpreter: slow
def test_backends_follow_the_reference_in_float64(model, backend, batch, iterations):
    """Whole runs with the fused ops against the reference ops. The optimisation amplifies
    rounding: in float32 even the reference against itself, from a pre-mask perturbed by 1e-7,
    differs by 0.1 after 50 iterations (benchmarks/RESULTS.md), so runs are compared in float64
    (float64 images give float64 masks), where kernels that compute the same function agree."""
    reason = sas_fast.ops.unavailable_reason(backend, torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    images = textured_images(batch).double()
    model = model.double()
    ref = attribute(model, images, 0, iterations=iterations, backend="reference")
    out = attribute(model, images, 0, iterations=iterations, backend=backend)
    assert (out - ref).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_and_images(dtype):
    """A model converted with ``.half()`` / ``.bfloat16()``: the masks stay float32, the masked
    images reach the model in its dtype, and the saliency agrees with the float32 run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    images = torch.randn(2, 3, 20, 24)
    fp32 = attribute(model, images, 1, iterations=5, precision="fp32")
    half = attribute(model.to(dtype), images.to(dtype), 1, iterations=5)
    assert half.dtype == torch.float32 and half.shape == (2, 20, 24)
    assert torch.corrcoef(torch.stack([fp32.flatten(), half.flatten()]))[0, 1] > 0.99
