"""PlainMamba models for Detectron2."""

from .adapter import MSDeformAttn, PlainMambaAdapter
from .fpn import LastLevelP6P7Conv
from .batch_augment import BatchAugment
from .classifier import PIXEL_MEAN, PIXEL_STD, ImageClassifier, LinearClsHead
from .plainmamba import ConvPatchEmbed, PlainMamba, PlainMambaLayer, PlainMambaMixer, check_images
from .segmentation import (
    PPM,
    ConvModule,
    EncoderDecoderSegmentor,
    FCNHead,
    UPerHead,
)

__all__ = [
    "BatchAugment",
    "PlainMambaAdapter",
    "LastLevelP6P7Conv",
    "MSDeformAttn",
    "PlainMamba",
    "PlainMambaLayer",
    "PlainMambaMixer",
    "ConvPatchEmbed",
    "ImageClassifier",
    "LinearClsHead",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "check_images",
    "ConvModule",
    "EncoderDecoderSegmentor",
    "FCNHead",
    "PPM",
    "UPerHead",
]
