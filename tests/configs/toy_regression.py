"""Toy LazyConfig for the training-loop tests: linear regression on a fixed random dataset.

Small enough to train in seconds on a CPU, with the pieces a real config has: a model that
returns ``{"loss": ...}`` in training and predictions in eval, an infinite train loader sharded
per rank by ``TrainingSampler``, a test loader sharded by ``InferenceSampler``, and a
``DatasetEvaluator`` that gathers from all ranks.
"""

import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import LazyCall as L
from detectron2.data.samplers import InferenceSampler, TrainingSampler
from detectron2.evaluation import DatasetEvaluator
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from detectron2.utils import comm
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch.utils.data import DataLoader, TensorDataset

from plainmamba.solver import get_param_groups

NUM_FEATURES = 8
NUM_TEST = 50


def make_dataset(num_samples: int, seed: int) -> TensorDataset:
    """``y = x @ w + b + noise`` with one ground truth ``(w, b)`` for every split."""
    truth = torch.Generator().manual_seed(1234)
    w = torch.randn(NUM_FEATURES, generator=truth)
    b = torch.randn((), generator=truth)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, NUM_FEATURES, generator=g)
    y = x @ w + b + 0.05 * torch.randn(num_samples, generator=g)
    return TensorDataset(x, y)


def _collate(batch):
    xs, ys = zip(*batch)
    return {"x": torch.stack(xs), "y": torch.stack(ys)}


def build_loader(num_samples: int, batch_size: int, seed: int, train: bool) -> DataLoader:
    """Train: infinite and shuffled, each rank its shard. Test: each sample once over all ranks."""
    dataset = make_dataset(num_samples, seed)
    sampler = (
        TrainingSampler(len(dataset), shuffle=True, seed=seed)
        if train
        else InferenceSampler(len(dataset))
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_collate)


class ToyRegressor(nn.Module):
    """A linear model; ``step_delay`` slows training steps so tests can interrupt a run."""

    def __init__(self, num_features: int = NUM_FEATURES, step_delay: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(num_features, 1)
        self.step_delay = step_delay

    def forward(self, batch):
        x = batch["x"].to(self.linear.weight.device)
        pred = self.linear(x).squeeze(-1)
        if not self.training:
            return pred
        if self.step_delay:
            time.sleep(self.step_delay)
        return {"loss": F.mse_loss(pred, batch["y"].to(pred.device))}


class RegressionEvaluator(DatasetEvaluator):
    """Mean squared error over the whole test set, summed over all ranks on the main one."""

    def __init__(self, output_dir=None):
        self._output_dir = output_dir
        self.reset()

    def reset(self):
        self._sq_err = 0.0
        self._count = 0

    def process(self, inputs, outputs):
        err = outputs.detach().float().cpu() - inputs["y"].float()
        self._sq_err += float((err**2).sum())
        self._count += err.numel()

    def evaluate(self):
        parts = comm.gather((self._sq_err, self._count), dst=0)
        if not comm.is_main_process():
            return {}
        count = sum(n for _, n in parts)
        result = {"mse": sum(s for s, _ in parts) / count, "num_samples": count}
        result["num_ranks"] = len(parts)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "regression_results.json"), "w") as f:
                json.dump(result, f)
        return {"regression": result}


model = L(ToyRegressor)(num_features=NUM_FEATURES, step_delay=0.0)

dataloader = dict(
    train=L(build_loader)(num_samples=256, batch_size=16, seed=0, train=True),
    test=L(build_loader)(num_samples=NUM_TEST, batch_size=8, seed=1, train=False),
    evaluator=L(RegressionEvaluator)(),
)

optimizer = L(torch.optim.AdamW)(
    params=L(get_param_groups)(weight_decay=0.0), lr=0.1, betas=(0.9, 0.999), weight_decay=0.0
)

# Multipliers are looked up at iter / max_iter, so with num_updates=100 the milestone is "80% of
# training" and the schedule follows train.max_iter overrides.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[80], num_updates=100),
    warmup_length=0.1,
    warmup_factor=0.1,
)

train = get_config("common/train.py").train
train.output_dir = "./output/toy_regression"
train.max_iter = 60
train.eval_period = 30
train.log_period = 10
train.checkpointer.period = 20
train.checkpointer.max_to_keep = 10
train.device = "cpu"
train.seed = 0
train.clip_grad = dict(enabled=False, max_norm=10.0, norm_type=2.0)
