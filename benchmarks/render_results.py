"""Render ``benchmarks/RESULTS.md`` from the rows of ``benchmarks/results/rows/`` (``rows.py``):
one page, the latest row of every (setting, metric) of every topic, each with a reference to its
machine, versions, commit and command. Deterministic: the same rows give the same page.

    python -m benchmarks.render_results            # writes benchmarks/RESULTS.md
    python -m benchmarks.render_results --check    # exit 1 if the page is not the rendering
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.rows import RESULTS

PAGE = Path(__file__).resolve().parent / "RESULTS.md"
#: (topic file, title, what a reader should know first), in page order
TOPICS = [
    ("tests", "Test suite and demo",
     "The README's two commands on a fresh clone."),
    ("table2", "Paper table 2 at 32 px",
     "Deletion / insertion game (Noisy Linear Imputation, 11 ratios, ground-truth targets), 20 test images per "
     "setting, SaS with the paper's schedule (`paper-cifar`, bf16 model) against the baselines; Overall = "
     "Ins - Del, ± standard error over images; paper's value in brackets where it gave one. Tables, curves (figure 4) and profiles (figure 3): "
     "`benchmarks/results/table2_*`."),
    ("presets", "Fewer model passes per image",
     "Presets chosen on held-out calibration images and reported on 64 evaluation images per setting, "
     "paired against the paper's schedule (\"default\" in the rows: `paper-cifar`, 7,200 passes); rules: "
     "`benchmarks/studies/rules.md`; frontier figure `docs/frontier.png`, tables `benchmarks/results/fast/`, every "
     "round of 450-pass candidates in `benchmarks/results/fast450*/` (`pooled_*.md`). SaS runs in bf16 unless the setting says "
     "otherwise (\"SaS fp32\": the same preset run again in fp32 on the same images, "
     "`benchmarks/results/fast_fp32/`)."),
    ("imagenet", "ImageNet at 224 px",
     "Real ImageNet photos (`shared/data/imagenet_samples`, fixed seeded order), ImageNet evaluation crop, "
     "true labels; SaS bf16 (`fast-imagenet`: fp32), baselines and the game fp32; the presets paired against "
     "`fast-imagenet` (7,200 passes, about 530 CPU-seconds a photo in fp32 on an AVX2 CPU), the baselines "
     "against `fastest` (the default preset), on the photos every method shares; rows per photo in `benchmarks/results/imagenet*/`, "
     "figures `docs/imagenet_*`. Extremal Perturbation at N >= 64 needs a GPU (`benchmarks/GPU.md`)."),
    ("speed", "Speed on the CPU",
     "The model is most of every iteration on a CPU; the mask pipeline's own time and the kernels' ratios "
     "against the eager reference, measured in the same run."),
    ("agreement", "Rounding sensitivity: how closely two backends can agree",
     "The optimisation amplifies rounding by about 10^6 over 50 iterations, so backends are compared on whole "
     "runs in float64 (where they agree to 1e-9) and on single ops in float32."),
    ("calibration", "Calibration of the defaults",
     "Chosen on calibration images only (test index = 1 mod 10), by the rules in `benchmarks/studies/rules.md`."),
    ("ops", "Op benchmarks",
     "pytest-benchmark of each op, forward + backward, every backend in the same run "
     "(`BENCH_ROWS=... BENCH_RESULT_ROWS=1 pytest -p benchmarks.speed.bench_rows benchmarks/speed/test_ops_bench.py`)."),
    ("cuda", "CUDA kernels without a GPU",
     "No GPU has run this code yet: there are no GPU timings. What is known without one: ahead-of-time "
     "compiles for every target and the launch shapes counted under the interpreter at the CUDA block sizes."),
]


def latest(path: Path) -> list:
    """The last row of every (setting, metric) of a rows file, in first-seen order."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["setting"], row["metric"])] = row
    return list(rows.values())


def sources(topics: list) -> dict:
    """``{(machine, torch, triton, commit): [command, ...]}`` over every topic's rows, in first-cited
    order: one reference per machine, versions and commit, its commands numbered within it."""
    groups = {}
    for rows in topics:
        for row in rows:
            commands = groups.setdefault((row["machine"], row["torch"], row.get("triton"), row["commit"]), [])
            if row["command"] not in commands:
                commands.append(row["command"])
    return groups


def render() -> str:
    lines = ["# Measured results", "",
             "Rendered by `python -m benchmarks.render_results` from `benchmarks/results/rows/` (every row with its "
             "machine, versions, commit and command: the references [n] below each table, [n.j] the j-th command "
             "of reference n). How each is measured: `benchmarks/README.md`. Older numbers are in the history of "
             "these files.", ""]
    topics = [latest(RESULTS / f"{topic}.jsonl") if (RESULTS / f"{topic}.jsonl").exists() else []
              for topic, _, _ in TOPICS]
    groups = sources(topics)
    number = {key: n for n, key in enumerate(groups, 1)}
    for (topic, title, intro), rows in zip(TOPICS, topics):
        lines += [f"## {title}", "", intro, ""]
        if not rows:
            lines += ["No rows yet.", ""]
            continue
        lines += ["| setting | metric | value | ref |", "| --- | --- | --- | --- |"]
        cited = []
        for row in rows:
            key = (row["machine"], row["torch"], row.get("triton"), row["commit"])
            if key not in cited:
                cited.append(key)
            ref = str(number[key])
            if len(groups[key]) > 1:
                ref += f".{groups[key].index(row['command']) + 1}"
            value = f"{row['value']}{' ' + row['unit'] if row.get('unit') else ''}"
            lines.append(f"| {row['setting']} | {row['metric']} | {value} | [{ref}] |")
        lines.append("")
        for key in cited:
            machine, torch, triton, commit = key
            versions = f"torch {torch}" + (f", triton {triton}" if triton else "")
            commands = groups[key]
            listed = (f"`{commands[0]}`" if len(commands) == 1 else
                      "; ".join(f"({j}) `{c}`" for j, c in enumerate(commands, 1)))
            lines.append(f"[{number[key]}] {machine}; {versions}; commit {commit}: {listed}  ")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that RESULTS.md is the rendering")
    args = ap.parse_args(argv)
    page = render()
    if args.check:
        same = PAGE.exists() and PAGE.read_text() == page
        print("RESULTS.md is the rendering of the rows" if same else "RESULTS.md differs: rerun render_results")
        return 0 if same else 1
    PAGE.write_text(page)
    print(f"{PAGE}: {page.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
