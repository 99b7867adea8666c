"""The released ImageNet-1k recipe, 300 epochs (SPEC section 8), for Detectron2's engine.

Leaf configs in ``configs/ImageNet/`` pick the size, drop path, batch, warm-up and EMA and call
:func:`set_batch_size`, which derives every iteration count from the epochs:

    iterations per epoch = ceil(1,281,167 images / total batch)   (the last batch is partial)
    batch 2048: 626 per epoch -> 300 epochs = 187,800 iterations, warm-up 15 epochs = 9,390
    batch 1024: 1,252 per epoch -> 300 epochs = 375,600 iterations, warm-up 20 epochs = 25,040
    lr = 5e-4 x batch / 512; cosine to 1e-2 x lr; linear warm-up from 1e-3 x lr

To train with another total batch, derive a config that calls ``set_batch_size`` again (an
override of ``dataloader.train.total_batch_size`` alone would keep the old iteration counts).
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from plainmamba.modeling import BatchAugment
from plainmamba.solver import epoch_schedule

from .data.imagenet import dataloader
from .models.plainmamba_cls import model
from .optim import AdamW as optimizer

IMAGENET_TRAIN_IMAGES = 1_281_167
EPOCHS = 300

model.batch_augment = L(BatchAugment)(
    num_classes=1000,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    switch_prob=0.5,
    label_smoothing=0.1,
    erasing_prob=0.25,
)

optimizer.betas = (0.9, 0.999)
optimizer.eps = 1e-8
optimizer.weight_decay = 0.05
optimizer.params.weight_decay = 0.05

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
    warmup_length=None,  # set_batch_size
    warmup_factor=1e-3,
    warmup_method="linear",
)

train = dict(
    output_dir="./output/imagenet",
    init_checkpoint="",
    max_iter=None,  # set_batch_size
    amp=dict(enabled=True, precision="float16"),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=None, max_to_keep=5),  # every epoch
    eval_period=None,  # every epoch, as released
    log_period=20,
    device="cuda",
    clip_grad=dict(enabled=True, max_norm=5.0, norm_type=2.0),
    ema=dict(enabled=False, decay=0.9999),  # momentum 1e-4; on for L2 and L3
    epochs=EPOCHS,
    iters_per_epoch=None,  # set_batch_size
)


def set_batch_size(total_batch_size: int, warmup_epochs: float, epochs: int = EPOCHS) -> None:
    """Set the batch, the linearly scaled lr and all iteration counts of the recipe."""
    s = epoch_schedule(
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        num_images=IMAGENET_TRAIN_IMAGES,
        total_batch_size=total_batch_size,
    )
    dataloader.train.total_batch_size = total_batch_size
    optimizer.lr = 5e-4 * total_batch_size / 512
    train["epochs"] = epochs
    train["iters_per_epoch"] = s["iters_per_epoch"]
    train["max_iter"] = s["max_iter"]
    train["checkpointer"]["period"] = s["iters_per_epoch"]
    train["eval_period"] = s["iters_per_epoch"]
    lr_multiplier.warmup_length = s["warmup_iters"] / s["max_iter"]


set_batch_size(2048, warmup_epochs=15)
