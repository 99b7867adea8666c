"""PlainMamba models for Detectron2."""

from .classifier import PIXEL_MEAN, PIXEL_STD, ImageClassifier, LinearClsHead
from .plainmamba import ConvPatchEmbed, PlainMamba, PlainMambaLayer, PlainMambaMixer, check_images

__all__ = [
    "PlainMamba",
    "PlainMambaLayer",
    "PlainMambaMixer",
    "ConvPatchEmbed",
    "ImageClassifier",
    "LinearClsHead",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "check_images",
]
