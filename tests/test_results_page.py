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
        (n, j) = re.findall(r"\| \[(\d+)(?:\.(\d+))?\] \|$", line)[0]
        assert re.search(r"; torch \S+.*; commit [0-9a-f]{7}\+?: ", refs[n]), refs[n]
        # [n]: the reference's one command; [n.j]: its j-th of several, each numbered
        commands = re.findall(r"\((\d+)\) `[^`]+`", refs[n])
        assert (not j and not commands and re.search(r": `[^`]+`\s*$", refs[n])) or (j in commands), (line, refs[n])
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


def test_rows_of_one_machine_and_commit_share_a_reference_with_numbered_commands(tmp_path, monkeypatch):
    from benchmarks import rows

    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    monkeypatch.setattr(render_results, "TOPICS", [("demo", "Demo", "intro")])
    base = {"machine": "m", "torch": "t", "triton": None, "commit": "abcdef0"}
    lines = [dict(base, setting=s, metric="x", value=1, command=c)
             for s, c in (("a", "run a"), ("b", "run b"), ("c", "run a"))]
    lines.append(dict(base, commit="1234567", setting="d", metric="x", value=2, command="run d"))
    (tmp_path / "demo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = render_results.render()
    refs = re.findall(r"\| (\w) \| x \| \d \| \[([\d.]+)\] \|", page)
    assert refs == [("a", "1.1"), ("b", "1.2"), ("c", "1.1"), ("d", "2")]
    assert "[1] m; torch t; commit abcdef0: (1) `run a`; (2) `run b`  " in page
    assert page.endswith("[2] m; torch t; commit 1234567: `run d`\n")
    assert rows.RESULTS != tmp_path     # the real rows are untouched
