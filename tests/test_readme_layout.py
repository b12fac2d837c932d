"""The README's layout table matches the tree: every path it names exists, and every module of
the package is named by it (the file itself or a folder above it)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _layout_paths() -> set:
    readme = (REPO / "README.md").read_text()
    table = readme.split("\n## Layout\n", 1)[1].lstrip("\n").split("\n\n", 1)[0]
    assert table.startswith("| layer | where | what |"), "README's layout table moved"
    names = re.findall(r"`([^`]+)`", table)
    return {n for n in names if n.split("/")[0] in ("sas_fast", "benchmarks", "csrc")}


def test_every_path_in_the_layout_table_exists():
    paths = _layout_paths()
    assert "sas_fast/attribute.py" in paths and "sas_fast/ops/" in paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"README layout table names paths that do not exist: {missing}"


def test_every_module_is_in_the_layout_table():
    paths = _layout_paths()
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "sas_fast").rglob("*.py"))
    assert "sas_fast/step.py" in modules
    unnamed = [m for m in modules
               if m not in paths and not any(p.endswith("/") and m.startswith(p) for p in paths)]
    assert not unnamed, f"modules the README layout table does not name: {unnamed}"
