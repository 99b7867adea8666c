"""Command-line entry points: the argument parser, and what each launched process runs."""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing
import os
import sys
from typing import Any, Dict, Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import DictConfig

from ..checkpoint import PlainMambaCheckpointer
from ..lifecycle import tie_to_parent
from .config_checks import check_args
from .evaluation import evaluate_with_ema
from .train_loop import build_ema, do_train, resolve_device, trusts_checkpoints

__all__ = ["default_train_argument_parser", "launched_main", "main"]

# Under "detectron2", as train_loop's, so that messages reach its console and log.txt.
logger = logging.getLogger("detectron2.plainmamba.engine")


def default_train_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` with usage examples for this project."""
    script = "tools/lazyconfig_train_net.py"
    epilog = f"""
Examples:
  train on one GPU (or the CPU):
    $ python {script} --config-file CONFIG.py
  train with 8 processes on one machine (GLOO on CPU-only machines):
    $ python {script} --num-gpus 8 --dist-url auto --config-file CONFIG.py
  change config values (keys must exist; prefix a new key with '+'):
    $ python {script} --config-file CONFIG.py \\
        train.max_iter=1000 +train.clip_grad.enabled=True +train.clip_grad.max_norm=1
  resume from the last checkpoint in train.output_dir:
    $ python {script} --config-file CONFIG.py --resume
  evaluate a checkpoint:
    $ python {script} --config-file CONFIG.py --eval-only train.init_checkpoint=model.pth
"""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle train.init_checkpoint and resumed files without restrictions (they can "
        "then run code): only for files you trust that the safe loader refuses",
    )
    return parser


def _evaluate_checkpoint(cfg: DictConfig, trusted: bool = False) -> Dict[str, Any]:
    cfg.train.device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    if not cfg.train.get("init_checkpoint", None):
        logger.warning("--eval-only without train.init_checkpoint: evaluating initial weights")
    checkpointer = PlainMambaCheckpointer(model, cfg.train.output_dir, trusted=trusted)
    ema = build_ema(cfg, model)
    if ema is not None:
        checkpointer.add_checkpointable("ema", ema.checkpointable)
    checkpointer.load(cfg.train.get("init_checkpoint", ""))
    # Only a checkpoint that carries an average is evaluated twice.
    return evaluate_with_ema(cfg, model, ema.module if ema is not None and ema.restored else None)


def launched_main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """What ``tools/lazyconfig_train_net.py`` launches in each process: :func:`main`, then, once
    every rank is done, the process groups that ``launch`` created are destroyed and a spawned
    rank leaves without the interpreter's finalisation.

    Detectron2's launcher leaves the groups alive until the interpreter exits. Gloo's worker
    threads and DDP's reducer (kept alive by reference cycles through the trainer's hooks) are
    then torn down in whatever order finalisation picks, and now and then a rank dies with
    SIGABRT ("terminate called without an active exception") after its work is finished, which
    fails the whole job. So the cycles are collected while the group is alive, the group is
    destroyed, logs and streams are flushed, and a spawned rank ends with ``os._exit(0)``: nothing
    of its work is left to finalise. Only a normal return tears down: after an error other ranks
    may still wait in a collective, and the launcher reports the traceback.

    A rank spawned by the launcher is killed as soon as the launcher dies
    (:func:`~plainmamba.lifecycle.tie_to_parent`), and its data-loader workers die with it.
    """
    tie_to_parent()
    result = main(args)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        comm.synchronize()
        gc.collect()
        torch.distributed.destroy_process_group()
        if multiprocessing.parent_process() is not None:
            _leave_spawned_rank()
    return result


def _leave_spawned_rank() -> None:
    """End a spawned rank at once, after flushing what the interpreter's exit would flush."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    os._exit(0)


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Per-process entry point for ``detectron2.engine.launch``: train, or ``--eval-only``."""
    cfg = check_args(args)
    default_setup(cfg, args)
    # default_setup only configures the "detectron2" and "fvcore" loggers.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="plainmamba")
    if args.eval_only:
        results = _evaluate_checkpoint(cfg, trusted=trusts_checkpoints(args))
        if comm.is_main_process():
            print(results)
        return results
    return do_train(cfg, args)
