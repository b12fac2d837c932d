"""Models for demos and the paper's evaluation. Nothing is downloaded: weights come from
installed packages or from paths the caller gives."""
from .cifar import load_paper_model, resnet8, vgg16
from .data import load_npz_dataset, stratified_indices
from .efficientnet import DEMO_CLASS_NAMES, efficientnet_lite0, preprocess_imagenet

__all__ = ["DEMO_CLASS_NAMES", "efficientnet_lite0", "load_npz_dataset", "load_paper_model",
           "preprocess_imagenet", "resnet8", "stratified_indices", "vgg16"]
