"""Mask R-CNN, PlainMamba-Adapter-L3, COCO 1x (published: 46.8 box AP / 41.2 mask AP)."""

from ..common.mask_rcnn_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.plainmamba_adapter import ADAPTER_L3

model.backbone.bottom_up.update(ADAPTER_L3["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L3["trunk"])
