"""PlainMamba-L1 on ImageNet-1k, 300 epochs (published top-1 / top-5 77.9 / 94.0)."""

from ..common.imagenet_300e import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    set_batch_size,
    train,
)
from ..common.models.plainmamba import L1

model.backbone.update(L1)
model.backbone.drop_path_rate = 0.2
train["ema"]["enabled"] = False
# As released (AmpEpochBasedRunner, grad_clip max_norm 5.0): float16 autocast, clip 5.0.
train["amp"]["enabled"] = True
train["clip_grad"]["max_norm"] = 5.0
set_batch_size(2048, warmup_epochs=15)
