"""Mask R-CNN on the PlainMamba-Adapter, as released (SPEC section 8).

Detectron2's Mask R-CNN FPN with: the adapter's four levels into a SyncBN FPN (max-pool P6), the
standard RPN, a 4-conv + 1-fc box head with SyncBN and the 4-conv mask head; L1 box losses.
"""

from detectron2.model_zoo import get_config

from plainmamba.modeling import PIXEL_MEAN, PIXEL_STD

from .plainmamba_adapter import adapter

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = adapter
model.backbone.in_features = ["res2", "res3", "res4", "res5"]
model.backbone.norm = "SyncBN"
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)
model.input_format = "RGB"

model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
model.roi_heads.box_head.conv_norm = "SyncBN"
# MMDetection's L1 losses: smooth L1 with beta 0.
model.proposal_generator.smooth_l1_beta = 0.0
model.roi_heads.box_predictor.smooth_l1_beta = 0.0
