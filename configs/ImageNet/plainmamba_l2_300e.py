"""PlainMamba-L2 on ImageNet-1k, 300 epochs (published top-1 / top-5 81.6 / 95.6)."""

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
# As released (EpochBasedRunner, optimizer_config grad_clip max_norm 1.0): float32, clip 1.0.
train["amp"]["enabled"] = False
train["clip_grad"]["max_norm"] = 1.0
set_batch_size(2048, warmup_epochs=20)
