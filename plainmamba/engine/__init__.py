"""Training and evaluation of this project's LazyConfig files on Detectron2's engine.

``config_checks`` loads and validates configs and overrides, ``train_loop`` trains, ``evaluation``
evaluates, ``launch`` holds the command-line entry points; ``hooks``, ``ema_released`` and
``resume`` are the training loop's pieces.
"""

# add_full_model_grad_clipping lives in plainmamba.solver; it stays importable from here, where
# it was first published.
from ..solver import add_full_model_grad_clipping
from .config_checks import ConfigError, apply_overrides, check_args, load_config
from .evaluation import do_test
from .hooks import EMAHook, unwrap_model
from .launch import default_train_argument_parser, launched_main, main
from .train_loop import build_trainer, do_train, resolve_device

__all__ = [
    "EMAHook",
    "unwrap_model",
    "ConfigError",
    "add_full_model_grad_clipping",
    "apply_overrides",
    "build_trainer",
    "check_args",
    "default_train_argument_parser",
    "do_test",
    "do_train",
    "launched_main",
    "load_config",
    "main",
    "resolve_device",
]
