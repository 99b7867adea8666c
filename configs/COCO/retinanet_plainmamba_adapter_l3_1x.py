"""RetinaNet, PlainMamba-Adapter-L3, COCO 1x (published: 44.8 box AP)."""

from ..common.retinanet_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.plainmamba_adapter import ADAPTER_L3

model.backbone.bottom_up.update(ADAPTER_L3["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L3["trunk"])
