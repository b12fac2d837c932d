"""The dataset sub-commands of ``sas-fast``: ``attribute-dataset``, ``evaluate`` and ``merge``.

One process::

    sas-fast attribute-dataset --images data/cifar10/test.npz \\
        --model resnet8:cifar10:../shared/models --out runs/c10 [--batch-size 32] \\
        [--preset fast] [--iterations N] [--precision bf16] [--targets labels|predicted] [--option window=7]
    sas-fast merge runs/c10                      # -> runs/c10/saliency.npz
    sas-fast attribute-dataset ... --method grad-cam --out runs/c10-gradcam   # a baseline's maps
    sas-fast evaluate runs/c10 runs/c10-gradcam [--csv t.csv] [--json t.json] # the game, paired

(``python -m sas_fast.cli`` is the same command.) Several processes on one machine, one per
GPU (or CPU processes with gloo), with PyTorch's launcher::

    torchrun --nproc-per-node 8 -m sas_fast.cli attribute-dataset --images ... --out runs/c10

Several machines (``--out`` on a file system all of them see; run on every node)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 --rdzv-id c10-job \\
        -m sas_fast.cli attribute-dataset --images ... --model ... --out /shared/runs/c10

Each process takes the chunks ``c`` with ``c mod WORLD_SIZE == RANK`` and uses GPU
``LOCAL_RANK`` when CUDA is available; rank 0 shows the progress of all of them. An
interrupted run is resumed by running the same command again (with any number of
processes). Model specs: :mod:`sas_fast.dataset.model_spec`. One run per output folder at
a time. On CPU, torchrun gives each worker one thread (``OMP_NUM_THREADS=1``); one process
per core was faster than one process with a thread per core on a busy 2-core machine.

Wiring into a parser: ``add_cli_arguments(subparsers)`` adds the sub-commands with
``func`` set to their handler (``args.func(args)`` returns the exit status); the parser and
``main`` are :mod:`sas_fast.cli`'s.
"""
from __future__ import annotations

import argparse

from ..config import PRECISIONS, PRESETS, parse_option
from .chunks import merge
from .errors import DatasetRunError
from .methods import METHODS
from .run import attribute_dataset
from .scoring import evaluate_runs, table, write_rows


#: attribute_dataset arguments that have their own flag (``--option`` cannot set them)
FLAGS = ("preset", "batch_size", "iterations", "precision", "targets", "seed", "chunk_size", "max_chunks",
         "method")


def run_attribute_dataset(args) -> int:
    options = dict(args.option)
    flagged = [k for k in options if k in FLAGS]
    if flagged:
        raise DatasetRunError(f"--option {flagged[0]}={options[flagged[0]]!r}: use "
                              f"--{flagged[0].replace('_', '-')} instead")
    if args.preset is not None:
        options["preset"] = args.preset
    attribute_dataset(args.images, args.model, args.out, batch_size=args.batch_size,
                      iterations=args.iterations, precision=args.precision, targets=args.targets,
                      seed=args.seed, chunk_size=args.chunk_size, max_chunks=args.max_chunks,
                      method=args.method, **options)
    return 0


def run_evaluate(args) -> int:
    rows = evaluate_runs(args.dirs)
    if rows:                                          # rank 0
        print(table(rows))
        write_rows(rows, args.csv, args.json)
    return 0


def run_merge(args) -> int:
    print(f"merged into {merge(args.dir, args.dest)}")
    return 0


def add_cli_arguments(subparsers) -> None:
    """Add the ``attribute-dataset``, ``evaluate`` and ``merge`` sub-commands to an argparse sub-parser set."""
    p = subparsers.add_parser("attribute-dataset", help="SaS maps for every image of a folder or npz",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, metavar="SRC",
                   help="folder of images, or .npz with images/labels")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="efficientnet-lite0|1|2 | torchvision:NAME | timm:NAME | ARCH:DATASET[:MODELS_DIR] | "
                        "MODULE:FUNCTION")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (rerun to resume)")
    p.add_argument("--method", choices=METHODS, default="sas",
                   help="sas (default) or a baseline; one output folder per method")
    p.add_argument("--batch-size", type=int, default=32, help="images per SaS batch (default 32)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="SaS preset (default 'default', the fastest schedule: 448 passes per image; "
                        "'paper-cifar': the paper's, 7,200)")
    p.add_argument("--iterations", type=int, default=None, help="SaS iterations (default: the preset's)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="model precision; auto: bf16 where the device computes it natively (default fp32)")
    p.add_argument("--targets", choices=["auto", "labels", "predicted"], default="auto",
                   help="explained class: labels, top-1 prediction, or auto (labels if the source has them)")
    p.add_argument("--seed", type=int, default=0, help="pre-mask seed (default 0)")
    p.add_argument("--chunk-size", type=int, default=128, help="images per chunk file (default 128)")
    p.add_argument("--max-chunks", type=int, default=None, help="stop after N chunks per process")
    p.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                   help="further sas_fast.attribute option, e.g. window=7 (repeatable)")
    p.set_defaults(func=run_attribute_dataset)
    e = subparsers.add_parser("evaluate", help="score finished runs' maps with the deletion game and "
                              "compare them (paired)")
    e.add_argument("dirs", nargs="+", metavar="DIR", help="output folders of attribute-dataset (same images "
                   "and model); the first is the reference of the paired differences")
    e.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    e.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    e.set_defaults(func=run_evaluate)
    m = subparsers.add_parser("merge", help="assemble a finished attribute-dataset folder into one npz")
    m.add_argument("dir", help="output folder of attribute-dataset")
    m.add_argument("--dest", default=None, help="npz to write (default DIR/saliency.npz)")
    m.set_defaults(func=run_merge)

