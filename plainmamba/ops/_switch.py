"""What the ops' path switches share: the requested name, and whether Triton can run here."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional, Sequence


def requested_path(impl: Optional[str], env_var: str, choices: Sequence[str], what: str) -> str:
    """``impl``, else ``$env_var``, else ``auto``, normalised; ``ValueError`` naming the source
    and the choices when it is not one of ``choices``."""
    requested = (impl or os.environ.get(env_var) or "auto").strip().lower()
    if requested not in choices:
        source = "impl argument" if impl else f"${env_var}"
        raise ValueError(
            f"unknown {what} implementation {requested!r} (from the {source}); "
            f"choose one of {', '.join(choices)}"
        )
    return requested


def triton_importable() -> bool:
    """Whether ``import triton`` would work (without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def triton_interpreted(kernel_module: str) -> bool:
    """True when the Triton kernels of ``kernel_module`` run (or will run) on CPU tensors through
    the interpreter: decided when that module is imported, so ask it once it is."""
    module = sys.modules.get(kernel_module)
    if module is not None:
        return bool(getattr(module, "INTERPRETED", False))
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and triton_importable()
