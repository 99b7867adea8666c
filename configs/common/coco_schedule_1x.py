"""The released COCO 1x schedule (12 epochs, lr steps after epochs 8 and 11, 500 warmup iters).

Epochs become iterations from the data set size and the total batch:
    iters/epoch = ceil(118,287 train2017 images / 16) = 7,393
    max_iter    = 12 * 7,393 = 88,716; steps at 8 * 7,393 = 59,144 and 11 * 7,393 = 81,323.
That is Mask R-CNN's (released ``filter_empty_gt=False``: every image). RetinaNet's released
data set drops the images without annotations, 117,266 left: :func:`set_train_images` gives
7,330 per epoch, 87,960 iterations, steps at 58,640 and 80,630.
"""

import math

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

COCO_TRAIN_IMAGES = 118287
# train2017 images with at least one annotation (MMDetection's filter_empty_gt=True keeps these;
# Detectron2's filter_empty removes the same 1,021).
COCO_TRAIN_IMAGES_WITH_ANNOTATIONS = 117266
TOTAL_BATCH_SIZE = 16
ITERS_PER_EPOCH = math.ceil(COCO_TRAIN_IMAGES / TOTAL_BATCH_SIZE)
EPOCHS = 12
MAX_ITER = EPOCHS * ITERS_PER_EPOCH

train = get_config("common/train.py").train
train.max_iter = MAX_ITER
train.eval_period = ITERS_PER_EPOCH
train.checkpointer.period = ITERS_PER_EPOCH
train.checkpointer.max_to_keep = 3
train.device = "cuda"
train.seed = -1  # < 0: drawn at the start, saved in every checkpoint and reused by --resume
# Converted ImageNet weights of the trunk (tools/convert_official_checkpoint.py); the adapter,
# neck and heads start from scratch.
train.init_checkpoint = ""

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[8 * ITERS_PER_EPOCH, 11 * ITERS_PER_EPOCH],
        num_updates=MAX_ITER,
    ),
    warmup_length=500 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)


def set_train_images(num_images: int) -> None:
    """Derive every iteration count of the 12-epoch schedule from the training images."""
    per_epoch = math.ceil(num_images / TOTAL_BATCH_SIZE)
    max_iter = EPOCHS * per_epoch
    train.max_iter = max_iter
    train.eval_period = per_epoch
    train.checkpointer.period = per_epoch
    lr_multiplier.scheduler.milestones = [8 * per_epoch, 11 * per_epoch]
    lr_multiplier.scheduler.num_updates = max_iter
    lr_multiplier.warmup_length = 500 / max_iter
