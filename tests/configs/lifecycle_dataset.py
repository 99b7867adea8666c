"""A data set for ``toy_lifecycle.py`` that spawned data-loader workers can import by name.

Ranks start their data-loader workers with the "spawn" method, which pickles the data set by its
module and class name; classes defined in a LazyConfig file have no importable module.
"""

import os
import time

import torch
from torch.utils.data import Dataset, get_worker_info

NUM_FEATURES = 8


def mark_process(directory: str, role: str) -> None:
    """Write an empty ``directory/pid.<role>.<pid>`` that names this process."""
    os.makedirs(directory, exist_ok=True)
    open(os.path.join(directory, f"pid.{role}.{os.getpid()}"), "w").close()


def slow_worker_start(worker_id: int, delay: float = 0.0) -> None:
    """A ``worker_init_fn`` that holds worker 1 back, as a slow import would."""
    if worker_id == 1:
        time.sleep(delay)


def collate(batch):
    """``{"x": (B, F), "y": (B,)}``, what ``ToyRegressor`` reads."""
    xs, ys = zip(*batch)
    return {"x": torch.stack(xs), "y": torch.stack(ys)}


class MarkingDataset(Dataset):
    """Random regression samples; a worker process announces itself on its first sample."""

    def __init__(self, num_samples: int, seed: int, pid_dir: str):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, NUM_FEATURES, generator=g)
        self.y = self.x.sum(dim=1)
        self.pid_dir = pid_dir
        self.marked = False

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        if not self.marked and get_worker_info() is not None:
            mark_process(self.pid_dir, "worker")
            self.marked = True
        return self.x[index], self.y[index]
