"""UperNet, PlainMamba-L3, ADE20K 160k (published: 49.1 mIoU, 81 M parameters).

Train (8 GPUs, total batch 16), from the ImageNet weights of the trunk:
    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file configs/ADE20K/upernet_plainmamba_l3_160k.py \
        train.init_checkpoint=checkpoints/plainmamba_l3_d2.pth
Evaluate released weights (the MMSegmentation file directly, or converted with
tools/convert_official_checkpoint.py --task upernet):
    python tools/lazyconfig_train_net.py --eval-only \
        --config-file configs/ADE20K/upernet_plainmamba_l3_160k.py \
        train.init_checkpoint=checkpoints/upernet_l3_d2.pth
"""

from ..common.models.upernet_plainmamba import UPERNET_L3
from ..common.upernet_160k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(UPERNET_L3["backbone"])
model.decode_head.update(UPERNET_L3["decode_head"])
model.auxiliary_head.update(UPERNET_L3["auxiliary_head"])
