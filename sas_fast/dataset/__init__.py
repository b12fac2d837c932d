"""Dataset-scale SaS: every image of a folder or npz, sharded over processes, resumable.

- :func:`attribute_dataset` runs SaS on every image and writes chunk files
  (:mod:`.chunks`): maps (float16), dataset indices, targets, clean-image scores and the
  last iteration's mask-score profile, plus a ``manifest.json`` (configuration, per-chunk
  sha256, skipped images, throughput of every run). A rerun on the same folder verifies
  the finished chunks and redoes only the missing or corrupt ones.
- :func:`merge` assembles the chunks into one npz in dataset order.
- ``method=`` makes a baseline's maps the same way (:mod:`.methods`); :func:`evaluate_runs`
  scores finished runs with the deletion game and pairs them (:mod:`.scoring`).
- Sources (:mod:`.sources`): a folder of images or an npz; models (:mod:`.model_spec`):
  a spec string naming a classifier and its preprocessing.

Chunks are fixed index ranges dealt round-robin to the processes (chunk ``c`` to rank
``c mod world_size``), and every image's pre-mask comes from the same seed, so the maps do
not depend on the number of processes. The command line (``sas-fast attribute-dataset`` and
``sas-fast evaluate``, ``sas-fast merge``) is :mod:`.cli`.
"""
from .chunks import merge
from .errors import DatasetRunError
from .model_spec import resolve_model
from .run import attribute_dataset
from .scoring import evaluate_runs

__all__ = ["DatasetRunError", "attribute_dataset", "evaluate_runs", "merge", "resolve_model"]
