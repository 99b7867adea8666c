"""RetinaNet, PlainMamba-Adapter-L2, COCO 1x (published: 43.9 box AP)."""

from ..common.retinanet_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.plainmamba_adapter import ADAPTER_L2

model.backbone.bottom_up.update(ADAPTER_L2["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L2["trunk"])
