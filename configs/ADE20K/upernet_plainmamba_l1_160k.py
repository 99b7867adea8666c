"""UperNet, PlainMamba-L1, ADE20K 160k (published: 44.1 mIoU, 35 M parameters)."""

from ..common.models.upernet_plainmamba import UPERNET_L1
from ..common.upernet_160k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(UPERNET_L1["backbone"])
model.decode_head.update(UPERNET_L1["decode_head"])
model.auxiliary_head.update(UPERNET_L1["auxiliary_head"])
