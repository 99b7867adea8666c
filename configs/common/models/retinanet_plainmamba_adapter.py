"""RetinaNet on the PlainMamba-Adapter, as released (SPEC section 8).

The adapter's strides 8-32 into a SyncBN FPN whose P6/P7 come from P5's output through two
normalised 3x3 stride-2 convs (no ReLU between them), the 4-conv RetinaNet head, focal loss
(alpha 0.25, gamma 2) and an L1 box loss.
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from plainmamba.modeling import PIXEL_MEAN, PIXEL_STD, LastLevelP6P7Conv

from .plainmamba_adapter import adapter

model = get_config("common/models/retinanet.py").model
model.backbone.bottom_up = adapter
model.backbone.bottom_up.out_features = ["res3", "res4", "res5"]
model.backbone.in_features = ["res3", "res4", "res5"]
model.backbone.norm = "SyncBN"
model.backbone.top_block = L(LastLevelP6P7Conv)(
    in_channels="${..out_channels}", out_channels="${..out_channels}", norm="${..norm}"
)
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)
model.input_format = "RGB"
model.smooth_l1_beta = 0.0
