"""Models for demos and the paper's evaluation. Nothing is downloaded: weights come from
installed packages or from paths the caller gives."""
from .efficientnet import DEMO_CLASS_NAMES, efficientnet_lite0, preprocess_imagenet

__all__ = ["DEMO_CLASS_NAMES", "efficientnet_lite0", "preprocess_imagenet"]
