"""Evaluation of attributions: the deletion / insertion game with Noisy Linear Imputation
(docs/SPEC.md section 5). :func:`deletion_game` plays it; :func:`nli_impute` fills removed pixels."""
from .game import GameResult, deletion_game, pixel_ranks
from .nli import nli_impute

__all__ = ["GameResult", "deletion_game", "nli_impute", "pixel_ranks"]
