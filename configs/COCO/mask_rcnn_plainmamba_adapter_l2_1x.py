"""Mask R-CNN, PlainMamba-Adapter-L2, COCO 1x (published: 46.0 box AP / 40.6 mask AP).

Train (8 GPUs, total batch 16):
    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file configs/COCO/mask_rcnn_plainmamba_adapter_l2_1x.py \
        train.init_checkpoint=checkpoints/plainmamba_l2_d2.pth
Evaluate released weights (converted with tools/convert_official_checkpoint.py):
    python tools/lazyconfig_train_net.py --eval-only \
        --config-file configs/COCO/mask_rcnn_plainmamba_adapter_l2_1x.py \
        train.init_checkpoint=checkpoints/mask_rcnn_l2_d2.pth
"""

from ..common.mask_rcnn_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.plainmamba_adapter import ADAPTER_L2

model.backbone.bottom_up.update(ADAPTER_L2["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L2["trunk"])
