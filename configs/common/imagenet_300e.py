"""The released ImageNet-1k recipe, 300 epochs (docs/model.md#imagenet-1k), for Detectron2's engine.

Leaf configs in ``configs/ImageNet/`` pick the size, drop path, batch, warm-up, precision,
gradient clipping and EMA and call :func:`set_batch_size`, which derives every iteration count
from the epochs (docs/recipes.md#imagenet-1k compares every setting with the released files):

    iterations per epoch = ceil(1,281,167 images / total batch)   (the last batch is partial)
    batch 2048: 626 per epoch -> 300 epochs = 187,800 iterations, warm-up 15 epochs = 9,390
    batch 1024: 1,252 per epoch -> 300 epochs = 375,600 iterations, warm-up 20 epochs = 25,040
    lr = 5e-4 x batch / 512; cosine to 1e-2 x lr, scaled by MMCV's linear warm-up from 1e-3
    checkpoints and evaluation every 5 epochs, the last 10 checkpoints kept

To train with another total batch, derive a config that calls ``set_batch_size`` again (an
override of ``dataloader.train.total_batch_size`` alone would keep the old iteration counts).
"""

from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import CosineParamScheduler

from plainmamba.modeling import BatchAugment
from plainmamba.solver import MMCVWarmupParamScheduler, epoch_schedule, released_param_groups

from .data.imagenet import dataloader
from .models.plainmamba_cls import model
from .optim import AdamW as optimizer

IMAGENET_TRAIN_IMAGES = 1_281_167
EPOCHS = 300
SAVE_EPOCHS = 5  # checkpoint_config / evaluation interval of the released configs

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
# MMCV's paramwise_cfg of the released configs: norms, biases, pos_embed, A_log, D and
# direction_Bs are not decayed; the mixer's depthwise conv2d (bias included) is.
optimizer.params = L(released_param_groups)(recipe="imagenet", weight_decay=0.05)

lr_multiplier = L(MMCVWarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
    warmup_length=None,  # set_batch_size
    warmup_factor=1e-3,
    warmup_method="linear",
)

train = dict(
    output_dir="./output/imagenet",
    init_checkpoint="",
    max_iter=None,  # set_batch_size
    amp=dict(enabled=True, precision="float16"),  # L1; L2 and L3 train in float32
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=None, max_to_keep=10),  # every SAVE_EPOCHS epochs
    eval_period=None,  # every SAVE_EPOCHS epochs, as released
    log_period=20,
    device="cuda",
    seed=-1,  # < 0: drawn at the start, saved in every checkpoint and reused by --resume
    clip_grad=dict(enabled=True, max_norm=5.0, norm_type=2.0),  # L1; L2 and L3: 1.0
    # The released EMACheckpointHook of L2 and L3 (plainmamba.engine.ema_released): parameters
    # only, momentum 1e-4 (x10 from epoch 250), swapped into the model at every epoch's end.
    ema=dict(
        enabled=False,
        kind="released",
        momentum=1e-4,
        warm_up=100,
        decay_epochs=[250],
        decay_factor=10.0,
    ),
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
    train["checkpointer"]["period"] = SAVE_EPOCHS * s["iters_per_epoch"]
    train["eval_period"] = SAVE_EPOCHS * s["iters_per_epoch"]
    lr_multiplier.warmup_length = s["warmup_iters"] / s["max_iter"]


set_batch_size(2048, warmup_epochs=15)
