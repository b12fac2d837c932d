"""The repository speaks of the project only: no work-log wording, no paths of a development
machine, no dates of work (in every tracked text file)."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = {
    "a numbered work session": r"\bsessio[n] ?[0-9]",     # [n], [e], ...: this file does not match itself
    "an issue number": r"\bissu[e] #[0-9]",
    "a git work tree": r"\bwork[t]ree",
    "a loaned device": r"\bdevice (loa[n]|cal[l])|\b(was|were|is|are) len[t]\b",
    "a development machine's path": r"(?<![\w.])/(wor[k]|hom[e])/",
    "a day of work": r"\b(toda[y]|yesterda[y]|tonigh[t])\b|\bthis (mornin[g]|afternoo[n]|evenin[g])\b",
}
TEXT = (".py", ".md", ".sh", ".txt", ".toml", ".cpp", ".h", ".cfg", ".yml", ".yaml", ".json", "")


def _tracked() -> list:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / n for n in names if Path(n).suffix in TEXT]


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
    examples = {"a numbered work session": "as measured in sess" "ion 5",
                "an issue number": "see issue " "#21", "a git work tree": "in the work" "tree",
                "a loaned device": "the GPU was le" "nt for 15 minutes",
                "a development machine's path": "data in /wo" "rk/shared/data",
                "a day of work": "measured to" "day"}
    assert all(re.search(PATTERNS[k], v, re.IGNORECASE) for k, v in examples.items())
    assert not any(re.search(p, "shared/data, the pipeline's sessions, a silent helper", re.IGNORECASE)
                   for p in PATTERNS.values())
