"""Mask R-CNN, PlainMamba-Adapter-L2, COCO 1x (published: 46.0 box AP / 40.6 mask AP)."""

from ..common.mask_rcnn_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.plainmamba_adapter import ADAPTER_L2

model.backbone.bottom_up.update(ADAPTER_L2["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L2["trunk"])
