"""Loading LazyConfig files and checking them, and command-line overrides, before processes start.

Every mistake found here raises :class:`ConfigError` with a message naming the key and the file,
instead of failing later in each launched process (docs/input_checks.md).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["ConfigError", "apply_overrides", "check_args", "load_config"]

_ABSENT = object()


class ConfigError(ValueError):
    """A config file or command-line override that cannot be used, with a readable message."""


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
