"""Evaluation of a model on a config's test loader, and of its weight average beside it."""

from __future__ import annotations

import copy
import inspect
import logging
import os
from typing import Any, Dict, Optional

import torch.nn as nn
from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig

__all__ = ["do_test", "evaluate_with_ema"]

# Under "detectron2", as train_loop's, so that messages reach its console and log.txt.
logger = logging.getLogger("detectron2.plainmamba.engine")


def _with_default_output_dir(node: Any, output_dir: str) -> Any:
    """The evaluator config, with ``output_dir`` set if unset and the evaluator takes one."""
    if isinstance(node, (ListConfig, list)):
        return [_with_default_output_dir(n, output_dir) for n in node]
    if not (isinstance(node, DictConfig) and "_target_" in node):
        return node
    if node.get("output_dir", None) is not None:
        return node
    target = node._target_
    if isinstance(target, str):
        target = locate(target)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return node
    if "output_dir" not in params:
        return node
    node = copy.deepcopy(node)
    node.output_dir = os.path.join(output_dir, "inference")
    return node


def do_test(cfg: DictConfig, model: nn.Module) -> Dict[str, Any]:
    """Run ``cfg.dataloader.evaluator`` on ``cfg.dataloader.test``; ``{}`` if no evaluator.

    On multi-process runs the evaluator gathers to the main process; others get ``{}``.
    """
    evaluator_cfg = cfg.dataloader.get("evaluator", None)
    if evaluator_cfg is None:
        logger.info("No dataloader.evaluator in the config: skipping evaluation")
        return {}
    evaluator_cfg = _with_default_output_dir(evaluator_cfg, cfg.train.output_dir)
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(evaluator_cfg)
    )
    results = results or {}
    if comm.is_main_process():
        print_csv_format(results)
    return results


def evaluate_with_ema(
    cfg: DictConfig, model: nn.Module, ema_model: Optional[nn.Module]
) -> Dict[str, Any]:
    """:func:`do_test` on ``model``, and on ``ema_model`` (if any) under the key ``"ema"``."""
    results = dict(do_test(cfg, model))
    if ema_model is not None:
        ema_results = do_test(cfg, ema_model)
        if ema_results:
            results["ema"] = ema_results
    return results
