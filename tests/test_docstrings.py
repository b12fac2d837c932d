"""The examples in the public API's docstrings run and print what they show, so they cannot
rot: a changed shape, dtype, value range or pass count fails here with the doctest's diff."""
import doctest

import pytest

import sas_fast


@pytest.mark.parametrize("api", [sas_fast.attribute, sas_fast.SaS.attribute],
                         ids=["sas_fast.attribute", "SaS.attribute"])
def test_docstring_example_runs_as_shown(api):
    tests = doctest.DocTestFinder().find(api, api.__qualname__, globs={})
    examples = sum(len(t.examples) for t in tests)
    assert examples >= 8, f"{api.__qualname__}'s docstring lost its example ({examples} statements)"
    runner, report = doctest.DocTestRunner(), []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted == examples
    assert result.failed == 0, "".join(report)
