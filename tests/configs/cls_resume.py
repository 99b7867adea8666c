"""The quick-start classifier with a crash at a chosen sample (for resume tests).

``$PLAINMAMBA_TEST_CRASH_AT=N`` makes the process SIGKILL itself when the data pipeline is
asked for its N-th training sample (counting from 1 in this process), as a power cut would.
Augmentation (crop, flip, RandAugment), erasing, Mixup/CutMix and drop path are on: a resumed
run must still compute exactly the numbers of an uninterrupted one.
"""

import os
import signal

from detectron2.config import LazyCall as L

from plainmamba.data import ClassificationMapper

from ...configs.quickstart.plainmamba_tiny_cls_shapes import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)


class CrashingMapper(ClassificationMapper):
    """A test-time mapper that kills its own process at the configured sample."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.crash_at = int(os.environ.get("PLAINMAMBA_TEST_CRASH_AT", "0"))

    def __call__(self, record):
        self.calls += 1
        if self.crash_at and self.calls == self.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(record)


dataloader.train.mapper = L(CrashingMapper)(
    is_train=True, image_size=64, scale=(0.5, 1.0), auto_augment="rand-m9-mstd0.5-inc1"
)
dataloader.train.num_workers = 0
dataloader.train.total_batch_size = 8
dataloader.train.seed = 7
dataloader.test.num_workers = 0
model.backbone.drop_path_rate = 0.1
model.batch_augment.update(mixup_alpha=0.8, cutmix_alpha=1.0, erasing_prob=0.25)
train.update(max_iter=12, eval_period=0, checkpointer=dict(period=5, max_to_keep=10), seed=0)
