"""PlainMamba-L2 on ImageNet-1k, 300 epochs (SPEC section 8; published top-1 / top-5 81.6 / 95.6).

Train on 8 GPUs (the recipe in ../common/imagenet_300e.py; data in datasets/README.md):

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file configs/ImageNet/plainmamba_l2_300e.py

Evaluate a released checkpoint (converted with tools/convert_official_checkpoint.py):

    python tools/lazyconfig_train_net.py --eval-only \\
        --config-file configs/ImageNet/plainmamba_l2_300e.py train.init_checkpoint=l2_d2.pth
"""

from ..common.imagenet_300e import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    set_batch_size,
    train,
)
from ..common.models.plainmamba import L2

model.backbone.update(L2)
model.backbone.drop_path_rate = 0.2
train["ema"]["enabled"] = True
set_batch_size(2048, warmup_epochs=20)
