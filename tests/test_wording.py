"""The repository speaks of the project only: no work-log wording, no paths of a development
machine, no dates of work (in every tracked text file)."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = {
    "a numbered work session": r"\bsession ?[0-9]",
    "an issue number": r"\bissue #[0-9]",
    "a git worktree": r"\bworktree",
    "a loaned device": r"\bdevice (loan|call)|\b(was|were|is|are) lent\b",
    "a development machine's path": r"(?<![\w.])/(work|home)/",
    "a day of work": r"\b(today|yesterday|tonight)\b|\bthis (morning|afternoon|evening)\b",
}
TEXT = (".py", ".md", ".sh", ".txt", ".toml", ".cpp", ".h", ".cfg", ".yml", ".yaml", ".json", "")


def _tracked() -> list:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / n for n in names if Path(n).suffix in TEXT and n != "tests/test_wording.py"]


@pytest.mark.parametrize("what", sorted(PATTERNS))
def test_no_work_log_wording(what):
    pattern = re.compile(PATTERNS[what], re.IGNORECASE)
    hits = []
    for path in _tracked():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        hits += [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
                 for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, f"{what}:\n" + "\n".join(hits[:20])


def test_the_patterns_catch_what_they_name():
    examples = {"a numbered work session": "as measured in session 5",
                "an issue number": "see issue #21", "a git worktree": "in the worktree",
                "a loaned device": "the GPU was lent for 15 minutes",
                "a development machine's path": "data in /work/shared/data",
                "a day of work": "measured today"}
    assert all(re.search(PATTERNS[k], v, re.IGNORECASE) for k, v in examples.items())
    assert not any(re.search(p, "shared/data, the pipeline's sessions, a silent helper", re.IGNORECASE)
                   for p in PATTERNS.values())
