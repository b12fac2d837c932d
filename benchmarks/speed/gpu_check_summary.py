"""The tables of a ``benchmarks/speed/gpu_check.sh`` run, as Markdown, from the folder its steps write to.

    python -m benchmarks.speed.gpu_check_summary RESULTS_DIR > summary.md

Reads what is there (a step cut short or not run leaves its section saying so): ``env.log``,
``steps.tsv`` (step, exit code, seconds, cap), ``pipeline.json``, ``attribute_*.json``,
``ops_rows.jsonl`` (one op benchmark per line, ``benchmarks/speed/bench_rows.py``), ``nli.log``
and ``conformance.log``. Op rows are keyed by (op, variant, case): the solve's cold and warm
starts are separate rows. Standard library only, so it runs where torch does not import.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

CUT = {"124": "cut at its cap", "137": "killed at its cap"}


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(head: list, rows: list) -> list:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def steps(folder: Path) -> list:
    path = folder / "steps.tsv"
    if not path.exists():
        return ["no step finished"]
    rows = []
    for line in path.read_text().splitlines()[1:]:
        name, rc, seconds, cap = line.split("\t")
        status = ("passed" if rc == "0" else rc if rc in ("not run", "not asked")
                  else CUT.get(rc, f"failed (exit code {rc})"))
        rows.append((name, status, seconds, cap))
    return _table(["step", "status", "seconds", "cap s"], rows)


def pipeline(folder: Path) -> list:
    rows = []
    for r in json.loads((folder / "pipeline.json").read_text()):
        timing = f"{_num(r.get('graph_ms'))} (graph)" if "graph_ms" in r else f"{_num(r.get('eager_ms'))} (eager)"
        rows.append((r["size"], r["batch"], r["masks"], r["backend"], timing, r["solve_iterations_cold"],
                     r["solve_iterations_warm"], r["launches"]["total"]))
    return _table(["px", "B", "K", "backend", "ms / iteration", "solve iterations cold", "solve iterations warm",
                   "ops + launches"], rows)


def attribute(folder: Path) -> list:
    rows = []
    for path in sorted(folder.glob("attribute_*.json")):
        for r in json.loads(path.read_text())["rows"]:
            ratio = [None if r[k] is None or not r["cnn"] else r[k] / r["cnn"] for k in ("fused", "graph")]
            rows.append((r["model"], r["px"], r["B"], r["precision"], r["images"], _num(r["cnn"]),
                         _num(r["reference"]), _num(r["fused"]), _num(r["graph"]), _num(ratio[0], 2),
                         _num(ratio[1], 2), r["fused_backend"] or "-"))
    return _table(["model", "px", "B", "prec", "images", "cnn ms", "reference ms", "fused ms", "graph ms",
                   "fused / cnn", "graph / cnn", "fused backend"], rows)


def ops(folder: Path) -> list:
    median, backends = {}, []
    for line in (folder / "ops_rows.jsonl").read_text().splitlines():
        r = json.loads(line)
        p = r["params"]
        median[(r["op"], p.get("start", "-"), p["case"], p["backend"])] = r["median_ms"]
        backends += [] if p["backend"] in backends else [p["backend"]]
    backends.sort(key=lambda b: b != "reference")
    keys = sorted({k[:3] for k in median}, key=lambda k: (k[0], k[2], k[1]))
    rows = []
    for key in keys:
        times = [median.get((*key, b)) for b in backends]
        ref = median.get((*key, "reference"))
        speed = [_num(ref / t, 1) if ref is not None and t else "n/a" for t in times[1:]] if "reference" in backends \
            else []
        rows.append((*key, *(_num(t) for t in times), *speed))
    speed_head = [f"reference / {b}" for b in backends[1:]] if "reference" in backends else []
    return _table(["op (fwd + bwd)", "variant", "case", *(f"{b} ms" for b in backends), *speed_head], rows)


def nli(folder: Path) -> list:
    lines = [line for line in (folder / "nli.log").read_text().splitlines() if line.startswith("|")]
    return lines or ["no NLI row"]


def conformance(folder: Path) -> list:
    text = (folder / "conformance.log").read_text().splitlines()
    totals = [line.strip("= ") for line in text if re.match(r"^=+ .*\b(passed|failed|skipped|error|deselected)", line)]
    listed = sorted((line for line in text if re.match(r"^(FAILED|ERROR|SKIPPED)", line)),
                    key=lambda line: line.startswith("SKIPPED"))                 # failures first
    done = {o: sum(f" {o}" in line for line in text if "::" in line) for o in ("PASSED", "FAILED", "SKIPPED")}
    lines = [f"pytest: {totals[-1]}" if totals else
             "pytest did not finish; finished so far: " + ", ".join(f"{n} {o.lower()}" for o, n in done.items())]
    return lines + [""] + [f"    {line}" for line in listed[:40]] + ([f"    ... {len(listed) - 40} more"]
                                                                      if len(listed) > 40 else [])


SECTIONS = [("Steps", steps), ("Captured mask pipeline (headline)", pipeline),
            ("End to end against the CNN alone (headline)", attribute), ("Op benchmarks", ops),
            ("NLI solver", nli), ("Conformance", conformance)]


def summary(folder: Path) -> str:
    env = folder / "env.log"
    lines = ["# GPU check", "", env.read_text().strip().splitlines()[-1] if env.exists() else "no environment line"]
    for title, section in SECTIONS:
        lines += ["", f"## {title}", ""]
        try:
            lines += section(folder)
        except (OSError, ValueError, KeyError, IndexError) as err:     # a step missing or cut mid-write
            lines.append(f"no results ({type(err).__name__}: {err})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: gpu_check_summary.py RESULTS_DIR (the folder gpu_check.sh's steps write to)")
    print(summary(Path(sys.argv[1])), end="")
