"""The quick-start classifier made deterministic, with a crash at a chosen sample (for resume tests).

``$PLAINMAMBA_TEST_CRASH_AT=N`` makes the process SIGKILL itself when the data pipeline is
asked for its N-th training sample (counting from 1 in this process), as a power cut would.
Augmentation, drop path and erasing are off so that an interrupted-and-resumed run and an
uninterrupted run compute the same numbers.
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


dataloader.train.mapper = L(CrashingMapper)(is_train=False, image_size=64, crop_pct=1.0)
dataloader.train.num_workers = 0
dataloader.train.total_batch_size = 8
dataloader.train.seed = 7
dataloader.test.num_workers = 0
model.batch_augment.erasing_prob = 0.0
train.update(max_iter=12, eval_period=0, checkpointer=dict(period=5, max_to_keep=10), seed=0)
