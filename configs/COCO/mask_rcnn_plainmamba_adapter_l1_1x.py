"""Mask R-CNN, PlainMamba-Adapter-L1, COCO 1x (published: 44.1 box AP / 39.1 mask AP)."""

from ..common.mask_rcnn_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.plainmamba_adapter import ADAPTER_L1

model.backbone.bottom_up.update(ADAPTER_L1["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L1["trunk"])
