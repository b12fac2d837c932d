"""The model's input layout: channels-last on the CPU (and with a bf16 model), the default layout
for a model that cannot take it, the same map either way, and the model's own errors unchanged."""
import pytest
import torch
from torch import nn

import sas_fast
from sas_fast import step


class Net(nn.Module):
    """conv 3->4, ReLU, linear over the flattened features: ``.view`` (which a channels-last
    activation refuses) or ``.reshape`` (which takes any layout); records the layouts of the
    masked-image batches it is given (larger than the two explained images)."""

    def __init__(self, flatten: str):
        super().__init__()
        self.conv, self.linear, self.flatten = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 5), flatten
        self.layouts = []
        self.eval()
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)

    def forward(self, x):
        if x.shape[0] > 2:
            self.layouts.append("channels_last" if x.is_contiguous(memory_format=torch.channels_last)
                                else "contiguous")
        h = torch.relu(self.conv(x))
        return self.linear(h.view(h.shape[0], -1) if self.flatten == "view" else h.reshape(h.shape[0], -1))


def images():
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def run(model, precision="fp32", **kw):
    return sas_fast.attribute(model, images(), [1, 3], iterations=3, window=3, precision=precision,
                              seed=0, progress=False, **kw)


def test_the_cpu_feeds_the_model_channels_last_in_fp32():
    model = Net("reshape")
    run(model)
    assert set(model.layouts) == {"channels_last"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_model_that_refuses_channels_last_gets_the_default_layout_and_the_same_map(precision):
    strict, loose = Net("view"), Net("reshape")
    got, want = run(strict, precision), run(loose, precision)
    assert strict.layouts[0] == "channels_last"             # tried once ...
    assert set(strict.layouts[1:]) == {"contiguous"}        # ... then the rest of the run in NCHW
    tol = 1e-5 if precision == "fp32" else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=0)


def test_an_error_of_the_model_in_both_layouts_reaches_the_caller():
    class Broken(Net):
        def forward(self, x):
            out = super().forward(x)
            if x.shape[0] > 2:                                  # the masked images, not the checks
                raise RuntimeError("the model's own error")
            return out

    model = Broken("reshape")
    with pytest.raises(RuntimeError, match="the model's own error"):
        run(model)
    assert model.layouts == ["channels_last", "contiguous"]


def test_one_channel_images_need_no_second_try():
    """A 1-channel batch is channels-last and contiguous at once: one call, no fallback."""
    constants = type("C", (), {"channels_last": True})()
    calls = []

    class Objective:
        def scores(self, x, rows):
            calls.append(x.shape)
            raise RuntimeError("refused")

    config = sas_fast.config.SaSConfig(precision="fp32")
    with pytest.raises(RuntimeError, match="refused"):
        step.model_scores(Objective(), torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), config,
                          constants)
    assert len(calls) == 1 and constants.channels_last


def test_running_out_of_memory_is_not_taken_for_a_layout_refusal():
    constants = type("C", (), {"channels_last": True})()
    calls = []

    class Objective:
        def scores(self, x, rows):
            calls.append(x.is_contiguous())
            raise torch.cuda.OutOfMemoryError("out of memory")

    config = sas_fast.config.SaSConfig(precision="fp32")
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        step.model_scores(Objective(), x, torch.zeros(4, dtype=torch.long), config, constants)
    assert calls == [False] and constants.channels_last     # one try, channels-last kept


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_channels_last_must_be_a_bool_or_none(value):
    with pytest.raises(ValueError, match="channels_last must be True, False or None"):
        sas_fast.config.SaSConfig(channels_last=value).validate()


def test_channels_last_false_keeps_the_default_layout_on_the_cpu():
    model = Net("reshape")
    run(model, channels_last=False)
    assert set(model.layouts) == {"contiguous"}
