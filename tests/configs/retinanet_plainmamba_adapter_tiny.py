"""A tiny RetinaNet on the PlainMamba-Adapter (model only), for the export tests: the released
head and FPN layout at the quickstart Mask R-CNN's sizes."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from ...configs.common.models.retinanet_plainmamba_adapter import model

bottom_up = model.backbone.bottom_up
bottom_up.trunk.update(
    embed_dim=64, depth=4, num_stem_convs=1, dwconv_layers=[], img_size=128, drop_path_rate=0.0
)
bottom_up.update(
    interaction_indexes=[[0, 1], [2, 3]],
    conv_inplane=16,
    deform_num_heads=4,
    n_points=4,
    norm="naiveSyncBN",
)
model.backbone.out_channels = 64
model.backbone.norm = "naiveSyncBN"
model.head.input_shape = [L(ShapeSpec)(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.num_classes = 3
model.anchor_generator.sizes = [
    [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]
]
# The focal-loss prior starts every score near 0.01: keep such boxes so that an untrained model
# has detections to compare.
model.test_score_thresh = 0.005
model.max_detections_per_image = 50
