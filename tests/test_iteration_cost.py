"""What one SaS iteration launches outside the model (``benchmarks/speed/iteration_cost.py``): torch ops
by a dispatch-mode counter, Triton launches by a launch hook; on the CPU (C++ backend, Triton
under the interpreter) and on CUDA when present. Target: <= 25 per iteration (C++ 13,
Triton 20: 12 launches and the 8 torch ops the backends share, sampler, score gather, loss, Adam)."""

import pytest
import torch

from sas_fast import ops

from benchmarks.speed import iteration_cost as cost

LIMIT = 25
CPU = torch.device("cpu")


def _available(backend, device):
    if device == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA device"
    return ops.unavailable_reason(backend, torch.device(device))


def _case(backend, device):
    reason = _available(backend, device)
    return pytest.param(backend, device, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


CASES = [_case("cpp", "cpu"), _case("triton", "cpu"), _case("triton", "cuda")]


def test_counter_counts_ops_and_launches_but_not_views():
    a = torch.randn(4, 3)
    counter = cost.LaunchCounter()
    with counter:
        b = (a + 1).t().contiguous()
        b.sum()
    assert dict(counter.ops) == {"aten.add": 1, "aten.clone": 1, "aten.sum": 1}
    assert dict(counter.views) == {"aten.t": 1}
    if ops.unavailable_reason("triton", CPU) is None:
        with cost.triton_launch_hook(counter), counter:
            ops.pyramid_mask(torch.rand(1, 2, 1, 4, 4), torch.rand(1, 1, 4, 4), backend="triton")
        assert sum(counter.triton.values()) == 1


@pytest.mark.skipif(_available("cpp", "cpu") is not None, reason="needs the C++ backend")
def test_the_model_is_left_out():
    """A model with many ops counts as much as one with a single layer (C++ backend: its op count
    does not depend on the data, unlike the reference's iterative solve)."""
    deep = torch.nn.Sequential(cost.free_model(3, 8), *[torch.nn.Tanh() for _ in range(10)])
    counts = [cost.count_iteration("cpp", 8, 1, 4, model=model)
              for model in (cost.free_model(3, 8), deep)]
    assert counts[0]["total"] == counts[1]["total"] > 0
    assert not any("tanh" in name for name in counts[1]["by_name"])


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("mode", ["both", "insertion"])
def test_iteration_launches_at_most_25_outside_the_model(backend, device, mode):
    counts = cost.count_iteration(backend, 16, 2, 6, mode, device)
    assert counts["total"] <= LIMIT, counts
    assert "aten._local_scalar_dense" not in counts["by_name"], "a host sync inside the iteration"


@pytest.mark.parametrize("n", [1, 1024, 32768, 32769, 50176, 65536, 65537, 10**6])
def test_row_warps_are_the_fewest_that_keep_each_thread_within_its_share(n):
    from sas_fast.ops.triton.launch import ELEMENTS_PER_THREAD, row_warps

    warps = row_warps(n)
    assert warps in (4, 8, 16, 32)
    assert n <= warps * 32 * ELEMENTS_PER_THREAD or warps == 32
    assert warps == 4 or n > warps // 2 * 32 * ELEMENTS_PER_THREAD


def test_under_filled_names_the_launches_that_miss_the_target():
    shapes = {"grid": {"programs": 196, "warps": 4}, "rows8": {"programs": 18, "warps": 8},
              "rows4": {"programs": 18, "warps": 4}, "small": {"programs": 98, "warps": 4}}
    assert cost.under_filled({"launch_shapes": shapes}, 224 * 224) == ["rows4", "small"]
    assert cost.under_filled({"launch_shapes": shapes}, 300 * 300) == ["rows4", "rows8", "small"]


@pytest.mark.slow
def test_every_launch_fills_an_h200_at_224px_batch_1():
    """At the CUDA block sizes (interpreter; about 4 minutes on 2 cores)."""
    from sas_fast.ops.triton.launch import cuda_block_sizes

    if _available("triton", "cpu"):
        pytest.skip(str(_available("triton", "cpu")))
    with cuda_block_sizes():
        counts = cost.count_iteration("triton", 224, 1, 20, "both", "cpu")
    assert counts["launch_shapes"] and cost.under_filled(counts, 224 * 224) == [], counts["launch_shapes"]
