"""Training and evaluation of LazyConfig files on Detectron2's engine.

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
import copy
import difflib
import inspect
import logging
import os
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..checkpoint import PlainMambaCheckpointer
from ..lifecycle import tie_to_parent
from .hooks import EMAHook, KeepingPeriodicCheckpointer
from .resume import IterationSeededLoader, RunSeeds, prune_metrics

__all__ = [
    "ConfigError",
    "add_full_model_grad_clipping",
    "apply_overrides",
    "build_trainer",
    "check_args",
    "default_train_argument_parser",
    "do_test",
    "do_train",
    "load_config",
    "main",
    "resolve_device",
]

# Detectron2's default_setup configures the "detectron2" logger (console + log.txt); logging
# under it puts our messages in the same places without extra handlers.
logger = logging.getLogger("detectron2.plainmamba.engine")

_ABSENT = object()
_AMP_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class ConfigError(ValueError):
    """A config file or command-line override that cannot be used, with a readable message."""


# --------------------------------------------------------------------------------------------
# Config loading and validation
# --------------------------------------------------------------------------------------------


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


def _target_parameters(target: Any) -> Optional[Mapping[str, inspect.Parameter]]:
    """The parameters of a LazyCall target (object or dotted name); ``None`` if unknowable."""
    if isinstance(target, str):
        try:
            target = locate(target)
        except Exception:  # noqa: BLE001 - unknown targets fail later with their own error
            return None
    try:
        return inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return None


def _target_accepts(target: Any, name: str) -> bool:
    params = _target_parameters(target)
    if params is None:
        return True  # cannot tell: do not block the override
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    param = params.get(name)
    return param is not None and param.kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.VAR_POSITIONAL,
    )


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT)
    except Exception:  # noqa: BLE001 - e.g. a broken interpolation: the key is there
        return None


def _check_override_key(cfg: DictConfig, key: str, text: str, source: str) -> None:
    if _select(cfg, key) is not _ABSENT:
        return
    parent_key, _, name = key.rpartition(".")
    parent = _select(cfg, parent_key) if parent_key else cfg
    msg = f"override {text!r}: key '{key}' does not exist in config {source}"
    if isinstance(parent, DictConfig) and "_target_" in parent:
        # Arguments a LazyCall leaves at their defaults are not keys yet, but valid overrides.
        if _target_accepts(parent._target_, name):
            return
        target = parent._target_
        target = target if isinstance(target, str) else getattr(target, "__qualname__", target)
        raise ConfigError(f"{msg}, and {target} takes no argument '{name}'")
    if isinstance(parent, DictConfig):
        close = difflib.get_close_matches(name, [str(k) for k in parent.keys()], n=1)
        if close:
            msg += f" (did you mean '{parent_key + '.' if parent_key else ''}{close[0]}'?)"
    elif parent is not _ABSENT:
        msg += f" ('{parent_key}' is a value, not a group of keys)"
    else:
        parts = key.split(".")
        first_absent = next(
            ".".join(parts[: i + 1])
            for i in range(len(parts))
            if _select(cfg, ".".join(parts[: i + 1])) is _ABSENT
        )
        msg += f" (there is no '{first_absent}')"
    raise ConfigError(f"{msg}. To add a new key, write '+{text}'")


def _argument_default(target: Any, name: str) -> Any:
    params = _target_parameters(target)
    param = params.get(name) if params is not None else None
    if param is None or param.default is inspect.Parameter.empty:
        return _ABSENT
    return param.default


def _replaced_value(cfg: DictConfig, key: str) -> Any:
    """What an override of ``key`` replaces: the config's value, else the LazyCall's default."""
    value = _select(cfg, key)
    if value is not _ABSENT:
        return value
    parent_key, _, name = key.rpartition(".")
    parent = _select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and "_target_" in parent:
        return _argument_default(parent._target_, name)
    return _ABSENT


# Checked types, and how a message names them. bool before int: True is an int in Python.
_SCALAR_TYPES = ((bool, "a bool (True or False)"), (int, "an int"), (float, "a number"))


def _check_override_type(cfg: DictConfig, key: str, value: Any, text: str, source: str) -> None:
    """An override of a bool, int or float must be one too (an int may replace a float).

    Without this, ``train.max_iter=abc`` is stored as the string ``"abc"`` and fails only in
    the launched processes, in a traceback that does not name the key.
    """
    if value is None or (isinstance(value, str) and value.startswith("${")):
        return  # null, or an interpolation that is resolved (and used) later
    current = _replaced_value(cfg, key)
    for kind, name in _SCALAR_TYPES:
        if isinstance(current, kind):
            break
    else:
        return  # strings, lists, LazyCalls: any value may be meant
    if kind is bool:
        ok = isinstance(value, bool)
    else:
        numbers = (int, float) if kind is float else (int,)
        ok = isinstance(value, numbers) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(
            f"override {text!r} for config {source}: {key} must be {name} (it replaces "
            f"{current!r}), got {value!r} (a {type(value).__name__})"
        )


def apply_overrides(
    cfg: DictConfig, overrides: Sequence[str], source: str = "config"
) -> DictConfig:
    """``LazyConfig.apply_overrides`` that rejects unknown keys and wrong types, naming them.

    OmegaConf silently creates keys that do not exist, so a typo would be ignored. A key is
    accepted if it exists, if it is an argument of the LazyCall it belongs to, or if it is
    written with Hydra's ``+key=value`` (add) syntax. A value must have the type of the bool,
    int or float it replaces (the config's value or the LazyCall argument's default).
    """
    if not overrides:
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except Exception as err:  # noqa: BLE001 - Hydra's parse errors are several types
            raise ConfigError(
                f"cannot parse override {text!r} for config {source} (expected key=value): {err}"
            ) from err
        key = override.key_or_group
        if override.is_delete():
            raise ConfigError(f"override {text!r}: deleting keys is not supported")
        if override.is_sweep_override():
            raise ConfigError(
                f"override {text!r}: a comma-separated value is a sweep; write a list as "
                f"{key}=[a,b] or quote a string"
            )
        if not (override.is_add() or override.is_force_add()):
            _check_override_key(cfg, key, text, source)
            _check_override_type(cfg, key, override.value(), text, source)
    try:
        return LazyConfig.apply_overrides(cfg, list(overrides))
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"cannot apply overrides {list(overrides)} to {source}: {err}") from err


def load_config(config_file: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a LazyConfig file and apply ``key=value`` overrides, with clear errors."""
    if not config_file:
        raise ConfigError("no config file given: pass --config-file PATH")
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    try:
        cfg = LazyConfig.load(config_file)
    except Exception as err:  # noqa: BLE001 - exec of arbitrary Python: name the file
        raise ConfigError(f"cannot load config file {config_file}: {err}") from err
    return apply_overrides(cfg, overrides or (), source=config_file)


def _require(cfg: DictConfig, keys: Sequence[str], source: str) -> None:
    missing = [k for k in keys if _select(cfg, k) in (_ABSENT, None)]
    if missing:
        raise ConfigError(f"config {source} lacks required keys: {', '.join(missing)}")


def _required_keys(eval_only: bool) -> List[str]:
    keys = ["model", "dataloader", "train.output_dir", "train.device"]
    if not eval_only:
        keys += ["optimizer", "lr_multiplier", "dataloader.train", "train.max_iter"]
    return keys


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _check_device(cfg: DictConfig, source: str) -> None:
    device = _select(cfg, "train.device")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(
            f"train.device={device!r} in config {source}: expected 'cpu', 'cuda' or 'cuda:N' "
            f"(N a GPU index)"
        )
    if device.startswith("cuda:") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if int(device[len("cuda:") :]) >= count:
            raise ConfigError(
                f"train.device={device!r} in config {source}: this machine has {count} GPU(s)"
            )


def _check_count(cfg: DictConfig, key: str, source: str, least: int = 1, hint: str = "") -> Any:
    """``cfg``'s int at ``key`` (None if absent), which must be at least ``least``."""
    value = _select(cfg, key)
    if value is _ABSENT or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a positive int" if least == 1 else f"an int >= {least}"
        raise ConfigError(f"{key}={value!r} in config {source}: must be {what}{hint}")
    return value


def _check_batch_sizes(cfg: DictConfig, args: argparse.Namespace, source: str) -> None:
    # A batch of 0 images, or one that the processes cannot share evenly, would otherwise fail in
    # every launched process, with an assertion or a division by zero.
    _check_count(cfg, "dataloader.train.batch_size", source)  # per process
    total = _check_count(cfg, "dataloader.train.total_batch_size", source)
    gpus, machines = getattr(args, "num_gpus", 1) or 1, getattr(args, "num_machines", 1) or 1
    world = gpus * machines
    if total is not None and total % world:
        raise ConfigError(
            f"dataloader.train.total_batch_size={total} in config {source} cannot be split "
            f"evenly over {world} processes (--num-gpus {gpus} x --num-machines {machines}): "
            f"use a multiple of {world}"
        )


def _dict_nodes(node: Any, path: str) -> Iterator[Tuple[str, DictConfig]]:
    """``(path, node)`` for ``node`` and every DictConfig below it."""
    if isinstance(node, DictConfig):
        yield path, node
        keys: Sequence[Any] = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = range(len(node))
    else:
        return
    for key in keys:
        try:
            child = node[key]
        except Exception:  # noqa: BLE001 - a broken interpolation: instantiating reports it
            continue
        yield from _dict_nodes(child, f"{path}.{key}")


def _check_schedule(cfg: DictConfig, source: str) -> None:
    """Every milestone of a multi-step schedule must come before its ``num_updates``.

    fvcore raises "Milestone must be smaller than total number of updates" in every process
    otherwise; a schedule whose ``num_updates`` follows ``train.max_iter`` breaks this way when
    ``train.max_iter`` is lowered. Then the schedule is built here, so that any other mistake in
    it also shows before processes start.
    """
    for path, node in _dict_nodes(cfg.lr_multiplier, "lr_multiplier"):
        if "milestones" not in node or "num_updates" not in node:
            continue
        try:
            milestones = [int(m) for m in node.milestones]
            updates = node.num_updates
        except Exception:  # noqa: BLE001 - not a list of numbers: instantiating reports it
            continue
        if updates is None or all(m < updates for m in milestones):
            continue
        follows = ""
        if OmegaConf.is_interpolation(node, "num_updates"):
            follows = f" (from {node._get_node('num_updates')._value()})"
        raise ConfigError(
            f"config {source}: {path}.milestones={milestones} must be smaller than "
            f"{path}.num_updates={updates}{follows}. Lower the milestones, or set a fixed "
            f"num_updates such as 100: the engine reads the schedule at iteration / "
            f"train.max_iter, so the milestones then are percentages of any train.max_iter"
        )
    try:
        instantiate(cfg.lr_multiplier)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"lr_multiplier of config {source} cannot be built: {err}") from err


def check_args(args: argparse.Namespace) -> DictConfig:
    """Load and validate the config named by ``args`` (raises :class:`ConfigError`).

    Meant to run in the launching process, so that mistakes surface before workers start:
    besides :func:`load_config`'s checks of the overrides, ``train.device``, the iteration
    counts and periods, the batch sizes (positive; the total one divisible by the number of
    processes) and the learning-rate schedule.
    """
    source = args.config_file
    cfg = load_config(source, args.opts)
    _require(cfg, _required_keys(args.eval_only), source)
    _check_device(cfg, source)
    _check_count(cfg, "dataloader.test.batch_size", source)
    if args.eval_only:
        return cfg
    _check_count(cfg, "train.max_iter", source)
    _check_count(cfg, "train.log_period", source)
    _check_count(cfg, "train.checkpointer.period", source)
    _check_count(cfg, "train.eval_period", source, least=0, hint=" (0 turns evaluation off)")
    _check_batch_sizes(cfg, args, source)
    _check_schedule(cfg, source)
    return cfg


# --------------------------------------------------------------------------------------------
# Pieces of the training loop
# --------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``device``, or ``"cpu"`` (with a warning) when it asks for CUDA and there is none."""
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("train.device=%s but CUDA is not available: using the CPU", device)
        return "cpu"
    return device


def add_full_model_grad_clipping(
    optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` first clip the global gradient norm of all its parameters.

    One norm over every parameter the optimizer updates, as MMDetection's ``grad_clip`` (and
    unlike Detectron2's per-parameter ``CLIP_GRADIENTS``). Under AMP ``GradScaler.step``
    unscales before it calls ``step``, so the clipping sees the true gradients. The norm before
    clipping is logged as ``grad_norm`` when an event storage is active. Returns ``optimizer``,
    modified in place: its class becomes a generated subclass, so its state dict is unchanged.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    if "step" in vars(optimizer):
        # An instance-level step (e.g. torch's LRScheduler call-counting wrapper) holds the old
        # class's function and would bypass the subclass.
        raise ValueError(
            "optimizer.step is wrapped on the instance (an LR scheduler was created already?); "
            "add gradient clipping before creating schedulers"
        )
    # Applying twice replaces the previous setting instead of clipping twice.
    base = getattr(type(optimizer), "_full_model_clip_base", type(optimizer))
    base_step = base.step
    max_norm, norm_type = float(max_norm), float(norm_type)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            total = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            try:
                get_event_storage().put_scalar("grad_norm", float(total))
            except AssertionError:  # no storage outside a Detectron2 trainer
                pass
        ret = base_step(self)
        return loss if closure is not None else ret

    # torch re-wraps a class's step with its hook/profiler wrapper (on load_state_dict, too)
    # unless marked; base_step is wrapped already, so wrapping ours would run hooks twice.
    step.hooked = True
    optimizer.__class__ = type(
        base.__name__ + "WithFullModelGradClip",
        (base,),
        {"step": step, "_full_model_clip_base": base},
    )
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        # Fused optimizers unscale inside step(); GradScaler must unscale before we clip.
        optimizer._step_supports_amp_scaling = False
    return optimizer


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


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


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


def _build_ema(cfg: DictConfig, model: nn.Module) -> Optional[EMAHook]:
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


def _test_with_ema(
    cfg: DictConfig, model: nn.Module, ema_model: Optional[nn.Module]
) -> Dict[str, Any]:
    results = dict(do_test(cfg, model))
    if ema_model is not None:
        ema_results = do_test(cfg, ema_model)
        if ema_results:
            results["ema"] = ema_results
    return results


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
    ema = _build_ema(cfg, model)
    checkpointer = PlainMambaCheckpointer(
        model, cfg.train.output_dir, trainer=trainer, trusted=_trusted(args)
    )
    checkpointer.add_checkpointable("resume", seeds)
    if ema is not None:
        checkpointer.add_checkpointable("ema", ema.checkpointable)

    last_results: Dict[str, Any] = {}

    def evaluate() -> Dict[str, Any]:
        last_results.clear()
        last_results.update(_test_with_ema(cfg, model, ema.module if ema else None))
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


def _trusted(args: argparse.Namespace) -> bool:
    """``--trust-checkpoint``: full unpickling of the files this run loads (with a warning)."""
    return bool(getattr(args, "trust_checkpoint", False))


def _evaluate_checkpoint(cfg: DictConfig, trusted: bool = False) -> Dict[str, Any]:
    cfg.train.device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    if not cfg.train.get("init_checkpoint", None):
        logger.warning("--eval-only without train.init_checkpoint: evaluating initial weights")
    checkpointer = PlainMambaCheckpointer(model, cfg.train.output_dir, trusted=trusted)
    ema = _build_ema(cfg, model)
    if ema is not None:
        checkpointer.add_checkpointable("ema", ema.checkpointable)
    checkpointer.load(cfg.train.get("init_checkpoint", ""))
    # Only a checkpoint that carries an average is evaluated twice.
    return _test_with_ema(cfg, model, ema.module if ema is not None and ema.restored else None)


def launched_main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """What ``tools/lazyconfig_train_net.py`` launches in each process: :func:`main`, then the
    process groups that ``launch`` created are destroyed once every rank is done.

    Detectron2's launcher leaves them alive until the interpreter exits; Gloo's worker threads
    can then still hold tensors whose release needs the GIL during finalisation, and a rank dies
    with SIGABRT ("terminate called without an active exception") after its work is finished,
    failing the whole job. Only a normal return tears down: after an error other ranks may still
    wait in a collective.

    A rank spawned by the launcher is killed as soon as the launcher dies
    (:func:`~plainmamba.lifecycle.tie_to_parent`), and its data-loader workers die with it.
    """
    tie_to_parent()
    result = main(args)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return result


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Per-process entry point for ``detectron2.engine.launch``: train, or ``--eval-only``."""
    cfg = check_args(args)
    default_setup(cfg, args)
    # default_setup only configures the "detectron2" and "fvcore" loggers.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="plainmamba")
    if args.eval_only:
        results = _evaluate_checkpoint(cfg, trusted=_trusted(args))
        if comm.is_main_process():
            print(results)
        return results
    return do_train(cfg, args)
