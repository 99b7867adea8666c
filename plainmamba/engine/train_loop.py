"""The training loop for LazyConfig files on Detectron2's engine: trainer, hooks, resume.

The config layout is Detectron2's LazyConfig convention: ``model``, ``dataloader.{train,test,
evaluator}``, ``optimizer`` (its ``params.model`` is filled in here), ``lr_multiplier`` (a
fvcore ``ParamScheduler``) and ``train`` as in Detectron2's ``common/train.py``. On top of that:

* ``train.clip_grad = dict(enabled=True, max_norm=..., norm_type=2.0)``: clip the global gradient
  norm over all parameters (MMDetection's ``grad_clip``); absent means disabled.
* ``train.amp.precision``: ``"float16"`` (default) or ``"bfloat16"`` when ``train.amp.enabled``.
* ``train.ema = dict(enabled=True, decay=0.9999)``: an exponential moving average of the weights
  (:class:`~plainmamba.engine.hooks.EMAHook`), saved in every checkpoint under ``"ema"``,
  resumed, and evaluated beside the model (results under ``"ema/..."``). With
  ``kind="released"`` (and ``momentum``, ``decay_epochs``, ``decay_factor``) it is the released
  ImageNet EMA instead (:class:`~plainmamba.engine.ema_released.ReleasedEMAHook`), swapped into
  the model at every epoch's end, so the checkpoints and evaluations there hold the average.
* A train loader whose sampler has ``set_start`` (:class:`~plainmamba.data.ResumableTrainingSampler`)
  is moved to the resumed iteration, so ``--resume`` continues the data stream where it stopped.
  With :func:`~plainmamba.data.build_resumable_train_loader` and a random state reseeded per
  iteration (:mod:`plainmamba.engine.resume`) a resumed run repeats an uninterrupted one exactly
  on the CPU; checkpoint files are written atomically (``docs/checkpoints.md``).
* ``train.device`` asking for CUDA on a machine without falls back to CPU with a warning, and
  multi-process runs on CPU use GLOO with ``device_ids=None`` DDP.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from omegaconf import DictConfig

from ..checkpoint import PlainMambaCheckpointer
from ..solver import add_full_model_grad_clipping
from .config_checks import ConfigError
from .evaluation import evaluate_with_ema
from .hooks import EMAHook, KeepingPeriodicCheckpointer
from .resume import IterationSeededLoader, RunSeeds, prune_metrics

__all__ = ["build_ema", "build_trainer", "do_train", "resolve_device", "trusts_checkpoints"]

# Detectron2's default_setup configures the "detectron2" logger (console + log.txt); logging
# under it puts our messages in the same places without extra handlers.
logger = logging.getLogger("detectron2.plainmamba.engine")

_AMP_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str) -> str:
    """``device``, or ``"cpu"`` (with a warning) when it asks for CUDA and there is none."""
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("train.device=%s but CUDA is not available: using the CPU", device)
        return "cpu"
    return device


def trusts_checkpoints(args: argparse.Namespace) -> bool:
    """``--trust-checkpoint``: full unpickling of the files this run loads (with a warning)."""
    return bool(getattr(args, "trust_checkpoint", False))


def _amp_precision(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    dtype = _AMP_DTYPES.get(str(value).lower())
    if dtype is None:
        raise ConfigError(f"train.amp.precision={value!r}; use 'float16' or 'bfloat16'")
    return dtype


def build_trainer(
    cfg: DictConfig, model: nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer
) -> SimpleTrainer:
    """``AMPTrainer`` if ``cfg.train.amp.enabled`` and the model is on CUDA, else ``SimpleTrainer``."""
    amp = cfg.train.get("amp", None) or {}
    if amp.get("enabled", False):
        on_cuda = str(cfg.train.device).startswith("cuda") and torch.cuda.is_available()
        if on_cuda:
            precision = _amp_precision(amp.get("precision", "float16"))
            # bfloat16 has float32's range: loss scaling would only cost time.
            scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
            logger.info("Mixed precision training in %s", precision)
            return AMPTrainer(
                model, data_loader, optimizer, grad_scaler=scaler, precision=precision
            )
        logger.warning("train.amp.enabled is set, but AMP needs CUDA: training in float32")
    return SimpleTrainer(model, data_loader, optimizer)


def _create_ddp_model(model: nn.Module, device: str, ddp_kwargs: Any) -> nn.Module:
    kwargs = dict(ddp_kwargs or {})
    if not device.startswith("cuda"):
        # Detectron2 passes device_ids=[local_rank], which DDP rejects for CPU modules.
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def _maybe_clip(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> None:
    clip = cfg.train.get("clip_grad", None)
    if not clip or not clip.get("enabled", False):
        return
    max_norm = clip.get("max_norm", None)
    if max_norm is None:
        raise ConfigError("train.clip_grad.enabled is set but train.clip_grad.max_norm is not")
    norm_type = float(clip.get("norm_type", 2.0))
    add_full_model_grad_clipping(optimizer, float(max_norm), norm_type)
    logger.info("Clipping the global gradient norm to %s (norm type %s)", max_norm, norm_type)


def build_ema(cfg: DictConfig, model: nn.Module) -> Optional[EMAHook]:
    """The weight-average hook that ``cfg.train.ema`` asks for, or ``None``."""
    ema = cfg.train.get("ema", None)
    if not ema or not ema.get("enabled", False):
        return None
    if ema.get("kind", "model") == "released":
        # The released ImageNet EMA: parameters only, swapped into the model at epoch ends.
        from .ema_released import ReleasedEMAHook

        iters_per_epoch = cfg.train.get("iters_per_epoch", None)
        if not iters_per_epoch:
            raise ConfigError("train.ema.kind='released' needs train.iters_per_epoch")
        return ReleasedEMAHook(  # type: ignore[return-value]
            model,
            iters_per_epoch=int(iters_per_epoch),
            momentum=float(ema.get("momentum", 1e-4)),
            warm_up=int(ema.get("warm_up", 100)),
            decay_epochs=list(ema.get("decay_epochs", [250])),
            decay_factor=float(ema.get("decay_factor", 10.0)),
        )
    return EMAHook(model, decay=float(ema.get("decay", 0.9999)), device=ema.get("device", None))


def _set_data_position(train_loader: Any, start_iter: int) -> None:
    """Move a resumable stream or sampler to the first sample of iteration ``start_iter``."""
    stream = getattr(train_loader, "dataset", None)
    if hasattr(stream, "set_start_iter"):
        stream.set_start_iter(start_iter)
        if start_iter and getattr(stream, "aspect_ratio_grouping", False):
            logger.info("Data position restored: batch %d of this process's stream", start_iter)
        elif start_iter:
            logger.info(
                "Data position restored: sample %d of this process's stream (iteration %d, %d "
                "per step)",
                start_iter * stream.batch_size,
                start_iter,
                stream.batch_size,
            )
        return
    sampler = getattr(stream, "sampler", None)
    batch = getattr(train_loader, "batch_size", None)
    if sampler is None or not hasattr(sampler, "set_start") or not batch:
        if start_iter:
            logger.info("The train loader cannot seek: the data stream restarts on resume")
        return
    sampler.set_start(start_iter * batch)
    if start_iter:
        logger.info(
            "Data position restored: sample %d of this process's stream (iteration %d, %d per step)",
            start_iter * batch,
            start_iter,
            batch,
        )


def do_train(cfg: DictConfig, args: argparse.Namespace) -> Dict[str, Any]:
    """Train ``cfg`` (resuming if ``args.resume``); returns the last evaluation results."""
    cfg.train.device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    _maybe_clip(cfg, optimizer)

    train_loader = instantiate(cfg.dataloader.train)
    model = _create_ddp_model(model, cfg.train.device, cfg.train.get("ddp", None))
    # Seeds and data position live in every checkpoint; the wrapper reseeds all generators
    # per iteration, so that a resumed run draws the numbers the uninterrupted one would.
    seeds = RunSeeds(cfg.train.get("seed", None), train_loader)
    trainer = build_trainer(cfg, model, IterationSeededLoader(train_loader, seeds), optimizer)
    ema = build_ema(cfg, model)
    checkpointer = PlainMambaCheckpointer(
        model, cfg.train.output_dir, trainer=trainer, trusted=trusts_checkpoints(args)
    )
    checkpointer.add_checkpointable("resume", seeds)
    if ema is not None:
        checkpointer.add_checkpointable("ema", ema.checkpointable)

    last_results: Dict[str, Any] = {}

    def evaluate() -> Dict[str, Any]:
        last_results.clear()
        last_results.update(evaluate_with_ema(cfg, model, ema.module if ema else None))
        return last_results

    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ema,  # before the checkpointer, so that a checkpoint holds this step's average
            (
                KeepingPeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if main_process
                else None
            ),
            hooks.EvalHook(cfg.train.get("eval_period", 0), evaluate),
        ]
    )

    checkpointer.resume_or_load(cfg.train.get("init_checkpoint", ""), resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # The checkpoint holds the iteration that had finished; go on with the next one.
        start_iter = trainer.iter + 1
        checkpointer.restore_final(trainer.iter, cfg.train.max_iter)
    else:
        start_iter = 0
    seeds.start(start_iter)
    _set_data_position(train_loader, start_iter)
    if main_process:
        if start_iter:
            # The writers append to metrics.json: first drop what the interrupted run logged
            # past its last checkpoint, which this run logs again.
            metrics = os.path.join(cfg.train.output_dir, "metrics.json")
            dropped = prune_metrics(metrics, start_iter)
            if dropped:
                logger.info(
                    "Removed %d lines of %s (iteration >= %d)", dropped, metrics, start_iter
                )
        trainer.register_hooks(
            [
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.get("log_period", 20),
                )
            ]
        )
    trainer.train(start_iter, cfg.train.max_iter)
    return last_results
