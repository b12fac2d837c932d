"""sas_fast: Saliency as a Schedule (Singh & Namboodiri, ICIP 2024), fast and batched.

``sas_fast.attribute(model, images, target)`` explains any PyTorch image classifier;
``sas_fast.SaS`` is the same as a Captum attribution (:mod:`sas_fast.explainer`; built on
first use, so importing ``sas_fast`` does not import Captum) and ``sas_fast.quantus.explain``
as a Quantus ``explain_func``. Layers: :mod:`sas_fast.ops` (kernels and the reference),
:mod:`sas_fast.step` / :mod:`sas_fast.config` (the algorithm), and the interfaces (this
module, :mod:`sas_fast.cli`).
"""
from . import explainer, quantus
from .attribute import SaSTrace, attribute
from .config import PRESETS, SaSConfig, make_config

__all__ = ["PRESETS", "SaS", "SaSConfig", "SaSTrace", "attribute", "make_config"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "SaS":
        return explainer.SaS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
