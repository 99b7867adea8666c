"""UperNet, PlainMamba-L2, ADE20K 160k (published: 46.8 mIoU, 55 M parameters)."""

from ..common.models.upernet_plainmamba import UPERNET_L2
from ..common.upernet_160k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(UPERNET_L2["backbone"])
model.decode_head.update(UPERNET_L2["decode_head"])
model.auxiliary_head.update(UPERNET_L2["auxiliary_head"])
