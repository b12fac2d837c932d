"""pytest plugin (``-p benchmarks.speed.bench_rows``): each pytest-benchmark result appended to the JSON-lines
file named by ``$BENCH_ROWS`` as soon as its test ends, so a run cut short keeps every number
measured before the cut (``--benchmark-json`` writes only at the end).

One line per benchmark: ``op`` (the test's name without ``test_``), ``params`` (the test's
parameters; tuples as ``B{batch}-{size}px`` when they are a ``(batch, size, window)`` case),
``median_ms``, ``min_ms``, ``rounds`` and ``extra_info``. With ``$BENCH_RESULT_ROWS=1`` each is
also appended to the results rows (``benchmarks/rows.py``, topic ``ops``).
"""
import json
import os

import pytest

from benchmarks.rows import append as append_rows


def _param(value):
    if isinstance(value, tuple) and len(value) == 3:
        return f"B{value[0]}-{value[1]}px"
    return value if isinstance(value, (str, int, float, bool)) else str(value)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    bench = getattr(item, "funcargs", {}).get("benchmark")
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    if call.when != "call" or stats is None or "BENCH_ROWS" not in os.environ:
        return
    params = getattr(getattr(item, "callspec", None), "params", {})
    row = {"op": item.originalname.removeprefix("test_"), "params": {k: _param(v) for k, v in params.items()},
           "median_ms": stats.median * 1e3, "min_ms": stats.min * 1e3, "rounds": stats.rounds,
           "extra_info": bench.extra_info}
    with open(os.environ["BENCH_ROWS"], "a") as rows:
        rows.write(json.dumps(row, default=str) + "\n")
    if os.environ.get("BENCH_RESULT_ROWS") == "1":
        params = dict(row["params"])
        backend = params.pop("backend", "?")
        append_rows("ops", [{"setting": f"{row['op']}, " + ", ".join(f"{k} {v}" for k, v in sorted(params.items())),
                             "metric": f"{backend}: min / median ms",
                             "value": f"{row['min_ms']:.3f} / {row['median_ms']:.3f}"}])
