"""benchmarks/RESULTS.md is the rendering of the result rows: one page (<= 250 lines), every
number with a reference that names its machine, versions, commit and command."""
import json
import re

from benchmarks import render_results
from benchmarks.rows import RESULTS


def test_the_page_is_the_rendering_of_the_rows():
    assert render_results.PAGE.read_text() == render_results.render(), \
        "RESULTS.md differs from its rows: python -m benchmarks.render_results"
    assert render_results.main(["--check"]) == 0


def test_the_page_is_short_and_every_number_has_its_provenance():
    page = render_results.PAGE.read_text()
    assert page.count("\n") <= 250
    refs = dict(re.findall(r"^\[(\d+)\] (.+)$", page, re.MULTILINE))
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith(("| setting", "| ---"))]
    assert rows
    for line in rows:
        (n,) = re.findall(r"\| \[(\d+)\] \|$", line)
        assert re.search(r"; torch \S+.*; commit [0-9a-f]{7}\+?: `.+`", refs[n]), refs[n]
    for path in RESULTS.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert {"setting", "metric", "value", "machine", "torch", "commit", "command"} <= set(row), path


def test_latest_row_of_a_setting_wins_and_rows_record_their_provenance(tmp_path, monkeypatch):
    from benchmarks import rows

    monkeypatch.setattr(rows, "RESULTS", tmp_path)
    rows.append("demo", [{"setting": "s", "metric": "m", "value": 1}], command="python x")
    rows.append("demo", [{"setting": "s", "metric": "m", "value": 2}], command="python x")
    (latest,) = render_results.latest(tmp_path / "demo.jsonl")
    assert latest["value"] == 2 and latest["command"] == "python x" and latest["commit"]
    assert latest["machine"] and latest["torch"]
