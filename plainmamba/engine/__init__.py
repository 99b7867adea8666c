"""Training entry point on Detectron2's engine for this project's LazyConfig files."""

from .hooks import EMAHook, unwrap_model
from .train_loop import (
    ConfigError,
    add_full_model_grad_clipping,
    apply_overrides,
    build_trainer,
    check_args,
    default_train_argument_parser,
    do_test,
    do_train,
    launched_main,
    load_config,
    main,
    resolve_device,
)

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
