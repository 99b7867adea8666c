"""RetinaNet, PlainMamba-Adapter-L3, COCO 1x (published: 44.8 box AP).

Train (8 GPUs, total batch 16):
    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file configs/COCO/retinanet_plainmamba_adapter_l3_1x.py \
        train.init_checkpoint=checkpoints/plainmamba_l3_d2.pth
"""

from ..common.retinanet_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.plainmamba_adapter import ADAPTER_L3

model.backbone.bottom_up.update(ADAPTER_L3["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L3["trunk"])
