"""Shared steps of the quick-start training demos (``shapes_detection.py``, ``shapes_segmentation.py``)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_config(
    config_file: str, output_dir: str, opts: Sequence[str]
) -> Tuple[Any, Dict[str, Any], float]:
    """Train ``config_file`` with the trainer of ``tools/lazyconfig_train_net.py``.

    Returns the config with the overrides applied, the final evaluation results and the minutes
    that training and evaluation took.
    """
    from detectron2.config import LazyConfig

    from plainmamba.engine import default_train_argument_parser
    from plainmamba.engine import main as train_main

    overrides = [f"train.output_dir={output_dir}", *opts]
    args = default_train_argument_parser().parse_args(["--config-file", config_file, *overrides])
    start = time.time()
    results = train_main(args) or {}
    minutes = (time.time() - start) / 60
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), overrides)
    return cfg, results, minutes


def load_trained(cfg: Any, checkpoint: str) -> Any:
    """The config's model in eval mode with ``checkpoint`` loaded."""
    from detectron2.config import instantiate

    from plainmamba.checkpoint import PlainMambaCheckpointer

    model = instantiate(cfg.model).eval()
    PlainMambaCheckpointer(model).load(checkpoint)
    return model


def save_side_by_side(left: np.ndarray, right: np.ndarray, out_dir: str, name: str) -> str:
    """Write ``left | right`` (HxWx3 uint8) as ``out_dir/name.png``; returns the path."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, os.path.splitext(os.path.basename(name))[0] + ".png")
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)
    return path


def val_records(cfg: Any, num: int, keep: Any = None) -> List[dict]:
    """The first ``num`` records of the evaluator's data set (those ``keep`` accepts)."""
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get(cfg.dataloader.evaluator.dataset_name)
    return [r for r in records if keep is None or keep(r)][:num]
