"""sas_fast.attribute end to end: planted evidence, batch consistency, feature saliency,
micro-batching, traces, bad input and the model left exactly as found."""
import sys
from types import SimpleNamespace

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


def test_feature_saliency_finds_the_evidence_of_the_layer(model):
    """``norm``'s output depends on the texture inside REGION only, so its feature saliency ranks
    REGION first (by module or by name, the same map); ``highpass``'s output holds every
    pixel's texture, so its map does not single REGION out."""
    images = textured_images()
    feat = attribute(model, images, iterations=40, layer=model.norm)
    assert (region_recall(feat) > 0.7).all(), region_recall(feat)
    torch.testing.assert_close(feat, attribute(model, images, iterations=40, layer="norm"), rtol=0, atol=0)
    everywhere = attribute(model, images, iterations=40, layer=model.highpass)
    assert (region_recall(everywhere) < 0.5).all(), region_recall(everywhere)


def test_trace_records_score_profiles(model):
    images = textured_images()
    sal, trace = attribute(model, images, 0, preset="fast", iterations=6, num_masks=5, return_trace=True,
                           trace_iterations=[0, 5])
    assert trace.iterations == [0, 5]
    assert set(trace.scores) == {"insertion", "deletion"}
    ins = trace.scores["insertion"]
    assert ins.shape == (2, 2, 5) and trace.loss.shape == (6, 2)
    torch.testing.assert_close(ins[0, :, -1], model(images)[:, 0])      # fully-ON mask: the image
    torch.testing.assert_close(trace.scores["deletion"][0, :, 0], ins[0, :, -1])
    assert (ins[-1].mean() > ins[0].mean())          # optimisation raised the insertion scores


class FakeClock:
    """``time.perf_counter`` of sas_fast.attribute: each model call (batch of masked images) costs
    ``per_call`` seconds."""

    def __init__(self, model, per_call: float):
        self.now, self.per_call, self.model = 0.0, per_call, model

    def __call__(self):
        return self.now

    def forward(self, x):
        self.now += self.per_call
        return self.model(x)


@pytest.mark.parametrize("sas_object", [False, True])
def test_max_seconds_stops_before_an_iteration_that_would_end_late(model, monkeypatch, sas_object):
    """An iteration is 2 model calls of 6 masked images and the set-up 3 (the clean images, the
    trace's OFF and ON images): 1 s each, so iteration i ends at 3 + 2 (i + 1) s and a 13.5 s
    budget fits 5 of 9 iterations; the map is then the 5-iteration run's, bit for bit, and the
    trace counts what ran."""
    clock = FakeClock(model, 1.0)
    wrapped = nn.Sequential().eval()
    wrapped.forward = clock.forward
    monkeypatch.setattr(sys.modules["sas_fast.attribute"], "time", SimpleNamespace(perf_counter=clock))
    images = textured_images()
    options = dict(preset="paper-cifar", iterations=9, num_masks=5, max_batch=6)    # a constant lr
    if sas_object:
        sal, trace = SaS(wrapped, **options).attribute(images, 0, return_trace=True, max_seconds=13.5)
        sal = sal.squeeze(1)
    else:
        sal, trace = attribute(wrapped, images, 0, return_trace=True, max_seconds=13.5, **options)
    assert clock.now == 13 and trace.loss.shape == (5, 2) and trace.passes.tolist() == [5 * 6] * 2
    assert trace.iterations == [0, 2, 4]                         # the default points 0, 2, 4, 6, 8 run
    five = attribute(model, images, 0, preset="paper-cifar", iterations=5, num_masks=5, max_batch=6)
    assert torch.equal(sal, five)
    clock.now = 0.0
    assert attribute(wrapped, images, 0, max_seconds=100, **options).shape \
        == sal.shape
    assert clock.now == 1 + 2 * 9                                # a budget that is not reached: all 9


def test_sas_object_is_captum_shaped(model):
    explainer = SaS(model, preset="paper-cifar", iterations=3)
    target = torch.tensor([0, 1])
    out = explainer.attribute(textured_images(), target=target)
    assert out.shape == (2, 1, 32, 32)
    expected = attribute(model, textured_images(), target, preset="paper-cifar", iterations=3)
    assert torch.equal(out, expected.unsqueeze(1))
    assert explainer.config.iterations == 3 and sas_fast.PRESETS["paper-imagenet"].iterations == 800


class Weighted(nn.Module):
    """Class logits of the conv features weighted by a pixel map: ``forward(x, weight)``, or the
    map given at construction (``weight`` baked in)."""

    def __init__(self, conv, weight=None):
        super().__init__()
        self.conv, self.weight = conv, weight

    def forward(self, x, weight=None):
        return (self.conv(x) * (self.weight if weight is None else weight)).mean(dim=(2, 3))


def test_non_square_float64_and_additional_forward_args():
    """A per-image extra argument reaches each masked image's own row: every image's map equals
    the run of a model with that image's row baked in, and differs from the other row's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    images = torch.randn(2, 3, 20, 33, dtype=torch.float64)
    weight = torch.zeros(2, 1, 20, 33, dtype=torch.float64)
    weight[0, ..., :16], weight[1, ..., 17:] = 1, 1               # left half, right half
    targets = [0, 3]
    sal = attribute(Weighted(conv).eval(), images, targets, iterations=3, additional_forward_args=(weight,))
    assert sal.shape == (2, 20, 33) and sal.dtype == torch.float32
    for i, t in enumerate(targets):
        baked = attribute(Weighted(conv, weight[i:i + 1]).eval(), images[i:i + 1], t, iterations=3)
        torch.testing.assert_close(sal[i:i + 1], baked, rtol=0, atol=1e-6)
        other = attribute(Weighted(conv, weight[1 - i:2 - i]).eval(), images[i:i + 1], t, iterations=3)
        assert (sal[i:i + 1] - other).abs().max() > 0.1


class Wrapped(nn.Module):
    """``inner``'s logits passed through ``transform(logits, x)``: the models a user might write."""

    def __init__(self, inner, transform):
        super().__init__()
        self.inner, self.transform = inner, transform

    def forward(self, x):
        return self.transform(self.inner(x), x)


class NaNAfter(nn.Module):
    """``inner``'s logits for the first ``calls`` calls, NaN from then on."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x):
        self.calls -= 1
        out = self.inner(x)
        return out if self.calls >= 0 else out * float("nan")


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
    "NaN scores on masked images": lambda m: attribute(NaNAfter(m, 1), textured_images(), 0, iterations=3),
    "NaN logits on the images": lambda m: attribute(NaNAfter(m, 0), textured_images(), 0, iterations=3),
    "lr=inf": lambda m: attribute(m, textured_images(), 0, lr=float("inf")),
    "sharpness=inf": lambda m: attribute(m, textured_images(), 0, sharpness=float("inf")),
    "window=5.0": lambda m: attribute(m, textured_images(), 0, window=5.0, iterations=1),
    "iterations=2.5": lambda m: attribute(m, textured_images(), 0, iterations=2.5),
    "max_batch=2.5": lambda m: attribute(m, textured_images(), 0, iterations=1, max_batch=2.5),
    "levels=2.5": lambda m: attribute(m, textured_images(), 0, iterations=1, levels=2.5),
    "seed=None": lambda m: attribute(m, textured_images(), 0, iterations=1, seed=None),
    "num_masks='5'": lambda m: attribute(m, textured_images(), 0, iterations=1, num_masks="5"),
    "trace_iterations outside the run": lambda m: attribute(m, textured_images(), 0, iterations=3,
                                                            return_trace=True, trace_iterations=(7,)),
    "one-entry list for a batch of 2": lambda m: attribute(m, textured_images(), [1], iterations=1),
    "tuple output": lambda m: attribute(Wrapped(m, lambda z, x: (z,)), textured_images(), 0, iterations=1),
    "dict output": lambda m: attribute(Wrapped(m, lambda z, x: {"logits": z}), textured_images(), 0,
                                       iterations=1),
    "1-D output": lambda m: attribute(Wrapped(m, lambda z, x: z[:, 0]), textured_images(), 0, iterations=1),
    "B x 1 x C output": lambda m: attribute(Wrapped(m, lambda z, x: z[:, None]), textured_images(), 0,
                                            iterations=1),
    "fp16 images, fp32 model": lambda m: attribute(m, textured_images().half(), 0, iterations=1),
    "bf16 images, fp32 model": lambda m: attribute(m, textured_images().bfloat16(), 0, iterations=1),
    "meta images": lambda m: attribute(m, textured_images().to("meta"), 0, iterations=1),
    "max_seconds=0": lambda m: attribute(m, textured_images(), 0, iterations=1, max_seconds=0),
    "max_seconds=nan": lambda m: attribute(m, textured_images(), 0, iterations=1, max_seconds=float("nan")),
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


@pytest.mark.parametrize("name, message", [
    ("NaN scores on masked images", "insertion scores were NaN or Inf at iteration 0"),
    ("NaN logits on the images", "output on the images contains NaN"),
    ("window=5.0", "window must be a positive odd integer or None, got 5.0"),
    ("seed=None", "seed must be an integer, got None"),
    ("trace_iterations outside the run", r"integers in \[0, 2\], got \[7\]"),
    ("one-entry list for a batch of 2", "list of 1 entries for a batch of 2"),
    ("dict output", "got a dict"),
    ("B x 1 x C output", r"got shape \(2, 1, 2\)"),
    ("fp16 images, fp32 model", "images are torch.float16 but the model's parameters are torch.float32"),
    ("meta images", "'meta' device"),
    ("max_seconds=nan", "max_seconds must be None or a finite number of seconds > 0, got nan"),
])
def test_bad_input_messages_name_the_argument_and_value(name, message):
    with pytest.raises(ValueError, match=message):
        BAD_CALLS[name](TextureDetector().eval())


def test_non_finite_scores_stop_the_run_naming_iteration_and_mode(model):
    with pytest.raises(ValueError, match="the model's deletion scores were NaN or Inf at iteration 4 "):
        attribute(NaNAfter(model, 6), textured_images(), 0, mode="deletion", iterations=8)  # + the CPU probe

    def nan_gradient(logits, x):      # finite scores, NaN input gradient: sqrt'(0) * abs'(0)
        return logits + (x - x.detach()).abs().sqrt().sum(dim=(1, 2, 3))[:, None]
    with pytest.raises(ValueError, match="pre-mask became NaN or Inf in the update of iteration 0"):
        attribute(Wrapped(model, nan_gradient), textured_images(), 0, iterations=3)


def test_finite_watch_reads_back_every_n_iterations_and_at_the_end():
    """As on CUDA (``every`` iterations): a NaN at iteration 1 is reported at the next read-back,
    naming iteration 1; the last iteration is always checked."""
    from sas_fast.checks import FiniteWatch

    ok, bad = torch.zeros(2, 3), torch.full((2, 3), float("nan"))
    watch = FiniteWatch(("insertion", "deletion"), 10, torch.device("cpu"))
    watch.every = 4
    for it in range(3):
        watch.update(it, {"insertion": ok, "deletion": bad if it == 1 else ok}, ok)
    with pytest.raises(ValueError, match="deletion scores were NaN or Inf at iteration 1 "):
        watch.update(3, {"insertion": ok, "deletion": ok}, ok)
    last = FiniteWatch(("insertion",), 3, torch.device("cpu"))
    last.every = 100
    last.update(0, {"insertion": ok}, ok)
    last.update(1, {"insertion": ok}, ok)
    with pytest.raises(ValueError, match="insertion scores were NaN or Inf at iteration 2 "):
        last.update(2, {"insertion": bad}, ok)


def test_int_and_one_element_tensor_targets_broadcast(model):
    images = textured_images()
    each = attribute(model, images, [1, 1], iterations=2)
    for target in (1, torch.tensor([1]), torch.tensor(1)):
        torch.testing.assert_close(attribute(model, images, target, iterations=2), each, rtol=0, atol=0)


def test_max_batch_is_bit_identical_for_a_batch_independent_model():
    """The documented bound of ``SaSConfig.max_batch``: SaS's arithmetic does not depend on it,
    so a model that computes each image alone gives bit-identical maps for every ``max_batch``;
    the TextureDetector (batch-size-dependent kernels) differs from it in the last bits only."""
    per_image = Wrapped(TextureDetector().eval(), lambda z, x: z)
    per_image.forward = lambda x: torch.cat([per_image.inner(x[i:i + 1]) for i in range(len(x))])
    images = textured_images()
    full = attribute(per_image, images, 0, iterations=30)
    for max_batch in (1, 7, 100):
        assert torch.equal(attribute(per_image, images, 0, iterations=30, max_batch=max_batch), full)
    batched = TextureDetector().eval()
    one_by_one = attribute(batched, images, 0, iterations=30, max_batch=1)
    assert (one_by_one - attribute(batched, images, 0, iterations=30)).abs().max() < 1e-6


def test_train_mode_model_is_evaluated_in_eval_mode_and_restored():
    model = TextureDetector().train()
    model.norm.train(False)
    model.head.bias.requires_grad_(False)
    before = _state(model)
    with pytest.warns(UserWarning, match="train mode") as record:
        sal = attribute(model, textured_images(), 0, iterations=3)
    assert [r.filename for r in record if "train mode" in str(r.message)] == [__file__]    # the caller's line
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
    fp32 = attribute(model, images, 1, preset="fast", iterations=5, precision="fp32")
    half = attribute(model.to(dtype), images.to(dtype), 1, preset="fast", iterations=5)
    assert half.dtype == torch.float32 and half.shape == (2, 20, 24)
    assert torch.corrcoef(torch.stack([fp32.flatten(), half.flatten()]))[0, 1] > 0.99
