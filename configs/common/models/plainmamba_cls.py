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
    # The released classifier's init_cfg: every Linear (dt_proj too) truncated normal 0.02 with
    # zero bias, head normal 0.01 (docs/recipes.md#initialisation); "mamba" keeps Mamba's dt_proj.
    init="released",
)
