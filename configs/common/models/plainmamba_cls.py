"""ImageNet classifier: the PlainMamba trunk, mean-pooled tokens, one linear layer."""

from detectron2.config import LazyCall as L

from plainmamba.modeling import PIXEL_MEAN, PIXEL_STD, ImageClassifier

from .plainmamba import backbone

model = L(ImageClassifier)(
    backbone=backbone,
    num_classes=1000,
    pixel_mean=list(PIXEL_MEAN),
    pixel_std=list(PIXEL_STD),
    label_smoothing=0.1,
)
