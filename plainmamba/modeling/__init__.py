"""PlainMamba models for Detectron2."""

from .adapter import MSDeformAttn, PlainMambaAdapter
from .fpn import LastLevelP6P7Conv
from .batch_augment import BatchAugment
from .classifier import PIXEL_MEAN, PIXEL_STD, ImageClassifier, LinearClsHead
from .mmdet_rules import MaxIoUMatcher, ReleasedRCNN, ReleasedRetinaNet, mmdet_head_init_
from .detectors import CheckedGeneralizedRCNN, CheckedRetinaNet
from .inputs import check_image_inputs
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
    "MaxIoUMatcher",
    "ReleasedRCNN",
    "ReleasedRetinaNet",
    "mmdet_head_init_",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "check_images",
    "check_image_inputs",
    "CheckedGeneralizedRCNN",
    "CheckedRetinaNet",
    "ConvModule",
    "EncoderDecoderSegmentor",
    "FCNHead",
    "PPM",
    "UPerHead",
]
