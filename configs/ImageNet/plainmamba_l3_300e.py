"""PlainMamba-L3 on ImageNet-1k, 300 epochs (SPEC section 8; published top-1 / top-5 82.3 / 95.9).

Train on 8 GPUs (the recipe in ../common/imagenet_300e.py; data in datasets/README.md):

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file configs/ImageNet/plainmamba_l3_300e.py

Evaluate a released checkpoint (converted with tools/convert_official_checkpoint.py):

    python tools/lazyconfig_train_net.py --eval-only \\
        --config-file configs/ImageNet/plainmamba_l3_300e.py train.init_checkpoint=l3_d2.pth
"""

from ..common.imagenet_300e import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    set_batch_size,
    train,
)
from ..common.models.plainmamba import L3

model.backbone.update(L3)
model.backbone.drop_path_rate = 0.4
train["ema"]["enabled"] = True
set_batch_size(1024, warmup_epochs=20)
