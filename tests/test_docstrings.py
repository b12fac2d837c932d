"""The examples in the public API's docstrings run and print what they show, so they cannot
rot: a changed shape, dtype, value range or pass count fails here with the doctest's diff."""
import doctest

import pytest

import sas_fast


@pytest.mark.parametrize("api, statements", [(sas_fast.attribute, 8), (sas_fast.SaS.attribute, 8),
                                             (sas_fast.quantus.explain, 4)],
                         ids=["sas_fast.attribute", "SaS.attribute", "sas_fast.quantus.explain"])
def test_docstring_example_runs_as_shown(api, statements):
    tests = doctest.DocTestFinder().find(api, api.__qualname__, globs={})
    examples = sum(len(t.examples) for t in tests)
    assert examples >= statements, f"{api.__qualname__}'s docstring lost its example ({examples} statements)"
    runner, report = doctest.DocTestRunner(), []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted == examples
    assert result.failed == 0, "".join(report)
