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
     "setting, SaS defaults (bf16 model) against the baselines; Overall = Ins - Del, ± standard error over "
     "images; paper's value in brackets where it gave one. Tables, curves (figure 4) and profiles (figure 3): "
     "`benchmarks/results/table2_*`."),
    ("presets", "Fewer model passes per image",
     "Presets chosen on held-out calibration images and reported on 64 evaluation images per setting, "
     "paired against the default (7,200 passes); rules: `benchmarks/studies/rules.md`; frontier figure "
     "`docs/frontier.png`, tables `benchmarks/results/fast/`. SaS runs in bf16 unless the setting says "
     "otherwise (\"SaS fp32\": the same preset run again in fp32 on the same images, "
     "`benchmarks/results/fast_fp32/`)."),
    ("imagenet", "ImageNet at 224 px",
     "Real ImageNet photos (`shared/data/imagenet_samples`, fixed seeded order), ImageNet evaluation crop, "
     "true labels; SaS bf16, baselines and the game fp32; paired against `fast` on the photos every method "
     "shares; rows per photo in `benchmarks/results/imagenet*/`, figures `docs/imagenet_*`. `fast-imagenet` "
     "(7,200 passes, about 530 CPU-seconds a photo in fp32 on an AVX2 CPU) has rows on part of the 64 photos "
     "so far; Extremal Perturbation at N >= 64 needs a GPU (`benchmarks/GPU.md`)."),
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


def render() -> str:
    lines = ["# Measured results", "",
             "Rendered by `python -m benchmarks.render_results` from `benchmarks/results/rows/` (every row with its "
             "machine, versions, commit and command: the references [n] below each table). How each is measured: "
             "`benchmarks/README.md`. Older numbers are in the history of these files.", ""]
    sources = {}
    for topic, title, intro in TOPICS:
        path = RESULTS / f"{topic}.jsonl"
        rows = latest(path) if path.exists() else []
        lines += [f"## {title}", "", intro, ""]
        if not rows:
            lines += ["No rows yet.", ""]
            continue
        lines += ["| setting | metric | value | ref |", "| --- | --- | --- | --- |"]
        cited = []
        for row in rows:
            key = (row["machine"], row["torch"], row.get("triton"), row["commit"], row["command"])
            n = sources.setdefault(key, len(sources) + 1)
            if n not in cited:
                cited.append(n)
            value = f"{row['value']}{' ' + row['unit'] if row.get('unit') else ''}"
            lines.append(f"| {row['setting']} | {row['metric']} | {value} | [{n}] |")
        lines.append("")
        by_number = {n: key for key, n in sources.items()}
        for n in cited:
            machine, torch, triton, commit, command = by_number[n]
            versions = f"torch {torch}" + (f", triton {triton}" if triton else "")
            lines.append(f"[{n}] {machine}; {versions}; commit {commit}: `{command}`  ")
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
