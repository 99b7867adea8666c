"""UperNet, PlainMamba-L3, ADE20K 160k (published: 49.1 mIoU, 81 M parameters)."""

from ..common.models.upernet_plainmamba import UPERNET_L3
from ..common.upernet_160k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(UPERNET_L3["backbone"])
model.decode_head.update(UPERNET_L3["decode_head"])
model.auxiliary_head.update(UPERNET_L3["auxiliary_head"])
