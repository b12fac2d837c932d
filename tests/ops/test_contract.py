"""The backend contract of ``sas_fast/ops/README.md``: every backend module defines every op of
``ops.OPS`` with the reference's signature (and ``unavailable_reason``); every public op takes
``backend`` keyword-only; the CLI offers exactly ``"auto"`` and ``ops.BACKENDS``."""
import inspect

import pytest
import torch

from sas_fast import ops
from sas_fast.cli import build_parser
from sas_fast.ops import reference

#: parameters the reference alone has (trailing, with defaults; the dispatcher never passes them)
REFERENCE_ONLY = {"solve_thresholds": ("return_iterations",)}


def _contract_parameters(op: str) -> list[inspect.Parameter]:
    """The reference's parameters of ``op``, less its reference-only extras."""
    params = list(inspect.signature(getattr(reference, op)).parameters.values())
    extras = REFERENCE_ONLY.get(op, ())
    assert [p.name for p in params[len(params) - len(extras):]] == list(extras)
    assert all(p.default is not inspect.Parameter.empty for p in params[len(params) - len(extras):])
    return params[:len(params) - len(extras)]


@pytest.mark.parametrize("name", [b for b in ops.BACKENDS if b != "reference"])
def test_every_backend_defines_the_reference_ops_with_its_signatures(name):
    module = ops._backend_module(name)
    if module is None:
        pytest.skip(f"backend {name!r} is not importable")
    assert callable(module.unavailable_reason)
    assert inspect.signature(module.unavailable_reason).parameters.keys() == {"device"}
    if not all(hasattr(module, op) for op in ops.OPS):     # allowed only without its toolchain
        reason = module.unavailable_reason(torch.device("cpu"))
        assert reason is not None, f"backend {name!r} runs but lacks ops"
        pytest.skip(reason)
    for op in ops.OPS:
        got = list(inspect.signature(getattr(module, op)).parameters.values())
        assert got == _contract_parameters(op), f"{name}.{op}{inspect.signature(getattr(module, op))}"


@pytest.mark.parametrize("op", ops.OPS)
def test_public_op_is_the_contract_plus_keyword_only_backend(op):
    params = list(inspect.signature(getattr(ops, op)).parameters.values())
    backend = params[-1]
    assert backend.name == "backend" and backend.kind is inspect.Parameter.KEYWORD_ONLY
    assert backend.default == "auto"
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:-1])
    names = [p.name for p in params[:-1]]
    contract = [p.name for p in _contract_parameters(op)]
    assert names == (["schedule", "thresholds", "pyramid", "sharpness", "mode", "implicit_grad",
                      "channels_last"] if op == "masked_images" else contract)   # mode name -> modes tuple


POSITIONAL_BACKEND = {
    "smooth_softmax_pool": lambda: ops.smooth_softmax_pool(torch.randn(1, 1, 7, 7), 3, 1.0, "reference"),
    "threshold_masks": lambda: ops.threshold_masks(torch.randn(1, 1, 5, 5), [0.5], 20.0, None, True,
                                                   1e-4, 50, "reference"),
    "solve_thresholds": lambda: ops.solve_thresholds(torch.randn(1, 1, 5, 5), [0.5], 20.0, None, 1e-4,
                                                     50, "reference"),
    "masked_images": lambda: ops.masked_images(torch.randn(1, 1, 5, 5), torch.zeros(1, 1),
                                               torch.randn(1, 2, 1, 5, 5), 20.0, "both", True, False,
                                               "reference"),
    "blur_pyramid": lambda: ops.blur_pyramid(torch.randn(1, 1, 5, 5), 2, 1.0, "reference"),
    "pyramid_mask": lambda: ops.pyramid_mask(torch.randn(1, 2, 1, 5, 5), torch.rand(1, 1, 5, 5),
                                             "reference"),
}


@pytest.mark.parametrize("op", ops.OPS)
def test_positional_backend_is_refused(op):
    with pytest.raises(TypeError, match="positional argument"):
        POSITIONAL_BACKEND[op]()


def test_threshold_masks_positional_tol_is_the_tolerance():
    """Before ``backend`` was keyword-only, a 6th positional argument of ``threshold_masks``
    became the backend; now it is ``tol``."""
    schedule = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    _, loose = ops.threshold_masks(schedule, [0.5], 20.0, None, True, 1e-1, 50, backend="reference")
    _, tight = ops.threshold_masks(schedule, [0.5], 20.0, None, True, 1e-12, 50, backend="reference")
    _, keyword = ops.threshold_masks(schedule, [0.5], 20.0, tol=1e-1, backend="reference")
    assert torch.equal(loose, keyword) and not torch.equal(loose, tight)


def test_cli_backend_choices_are_the_backends():
    parser = build_parser()
    explain = parser._subparsers._group_actions[0].choices["explain"]
    (action,) = [a for a in explain._actions if a.dest == "backend"]
    assert tuple(action.choices) == ("auto",) + ops.BACKENDS
