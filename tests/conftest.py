"""Fixtures every test shares; plain helpers live in ``tests/helpers.py``."""

from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, run_scripts_together


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert (FIXTURES / "official_tiny_cls.pt").is_file(), f"fixtures missing under {FIXTURES}"
    return FIXTURES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# The two quick-start learning runs (classification and segmentation, 300 steps each). Each
# trains on one thread: on a machine that other jobs kept busy, two threads on two cores ran 3-4 s
# a step and outlasted the timeout. So both run at once, one a core; the first test that asks
# waits for both, and each test asserts its own run.
LEARNING_RUNS = {
    "classification": [
        "projects/quickstart/shapes_classification.py",
        "--num-vis",
        "2",
        "--threads",
        "1",
        "train.max_iter=300",
        "train.eval_period=300",
    ],
    "segmentation": [
        "projects/quickstart/shapes_segmentation.py",
        "--num-vis",
        "0",
        "--threads",
        "1",
        "train.max_iter=300",
        "train.eval_period=300",
        "train.checkpointer.period=300",
    ],
}


@pytest.fixture(scope="session")
def learning_runs(tmp_path_factory):
    """{task: (exit code, log, output dir)} of the shortened quick starts, run side by side."""
    root = tmp_path_factory.mktemp("learning_runs")
    runs, outs = [], {}
    for task, args in LEARNING_RUNS.items():
        outs[task] = root / task / "out"
        runs.append(([*args, "--output-dir", outs[task]], root / task / "data"))
    results = run_scripts_together(runs, timeout=900)
    return {task: (*result, outs[task]) for task, result in zip(LEARNING_RUNS, results)}
