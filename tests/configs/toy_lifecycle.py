"""The toy regression config with one data-loader worker per rank, for process-lifecycle tests.

Every rank (on its first training step) and every data-loader worker (on its first sample) writes
an empty file ``pid.<role>.<pid>`` under ``train.output_dir``, so a test can find the processes
of a run and check that they are gone. ``model.fail_rank`` / ``model.fail_at_iter`` make one rank
raise mid-training; ``dataloader.train.slow_worker_delay`` holds rank 0's second worker back (a
worker that still starts up when its rank dies); ``model.step_delay`` keeps a run going.
"""

import os
import sys
from functools import partial

from detectron2.config import LazyCall as L
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from torch.utils.data import DataLoader

from .toy_regression import ToyRegressor, dataloader, lr_multiplier, optimizer, train

# Spawned workers get this sys.path, so they can unpickle the data set by its module name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lifecycle_dataset import MarkingDataset, collate, mark_process, slow_worker_start  # noqa: E402


def build_worker_loader(
    num_samples: int,
    batch_size: int,
    seed: int,
    pid_dir: str,
    num_workers: int = 1,
    slow_worker_delay: float = 0.0,
) -> DataLoader:
    """An infinite shuffled train loader read by worker processes (rank 0's worker 1 starting
    ``slow_worker_delay`` seconds late)."""
    if comm.get_rank() != 0:
        slow_worker_delay = 0.0
    dataset = MarkingDataset(num_samples, seed, pid_dir)
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=partial(slow_worker_start, delay=slow_worker_delay),
    )


class LifecycleRegressor(ToyRegressor):
    """:class:`ToyRegressor` that announces its rank and can fail on purpose."""

    def __init__(
        self, pid_dir: str, step_delay: float = 0.0, fail_rank: int = -1, fail_at_iter: int = 0
    ):
        super().__init__(step_delay=step_delay)
        self.pid_dir = pid_dir
        self.fail_rank = fail_rank
        self.fail_at_iter = fail_at_iter
        self.steps = 0

    def forward(self, batch):
        if self.training:
            if self.steps == 0:
                mark_process(self.pid_dir, "rank")
            self.steps += 1
            if comm.get_rank() == self.fail_rank and self.steps > self.fail_at_iter:
                raise RuntimeError(f"planned failure of rank {self.fail_rank}")
        return super().forward(batch)


model = L(LifecycleRegressor)(pid_dir="${train.output_dir}", step_delay=0.0)
dataloader.train = L(build_worker_loader)(
    num_samples=256, batch_size=8, seed=0, pid_dir="${train.output_dir}"
)
train.eval_period = 0
train.checkpointer.period = 1000
