"""One path switch for the operators that have several implementations (scan, dwconv, MSDA).

A :class:`PathSwitch` turns a requested path name (a constructor argument such as
``PlainMamba(scan_impl=...)``, else the switch's environment override, else ``auto``) into the
concrete path for a device type, once: the result is cached and is a constant to
``torch.compile``, so the dispatch never breaks a graph. The environment override is read once,
when the switch is made (at import); :meth:`PathSwitch.reset` reads it again.

It also holds what the switches share: whether an optional package can be imported
(:func:`backend_available`, which :func:`assume_backends` can pretend about in tests) and the
flag under which the dispatchers route their calls through one registered custom op each, so that
FLOP analysis can count them (:func:`counting_ops`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "PathSwitch",
    "all_switches",
    "backend_available",
    "triton_interpreted",
    "assume_backends",
    "counting_ops",
    "counting_active",
    "keeps_plain_ops",
    "untraced",
]

# Every switch made, by its environment variable (tools/benchmark.py reports the overrides).
_SWITCHES: Dict[str, "PathSwitch"] = {}
# Availability that assume_backends() pretends (package name, or "triton_interpreter").
_ASSUMED: Dict[str, bool] = {}
_COUNTING = [False]


class PathSwitch:
    """The path choice of one operator.

    Args:
        what: the operator's name in messages (``"selective-scan"``).
        choices: the accepted names, ``auto`` first.
        env_var: the environment variable that overrides the default (read once, here).
        pick: ``pick(requested, device)`` -> concrete path, for a requested name other than
            ``None``; raises ``ValueError``/``RuntimeError`` for a path that cannot run there.
    """

    def __init__(
        self,
        what: str,
        choices: Sequence[str],
        env_var: str,
        pick: Callable[[str, torch.device], str],
    ):
        self.what = what
        self.choices = tuple(choices)
        self.env_var = env_var
        self._pick = pick
        self._resolved: Dict[Tuple[Optional[str], str], Tuple[str, str]] = {}
        self.env_override: Optional[str] = None
        self.reset()
        _SWITCHES[env_var] = self

        def resolved(impl: Optional[str], device_type: str) -> Tuple[str, str]:
            """(concrete path, requested name) for ``impl`` on ``device_type``, cached."""
            key = (impl, device_type)
            found = self._resolved.get(key)
            if found is None:
                requested = self.requested(impl)
                found = (self._pick(requested, torch.device(device_type)), requested)
                self._resolved[key] = found
            return found

        # What torch.compiler.assume_constant_result does, without importing torch._dynamo with
        # the package: torch.compile calls the function while tracing and keeps its result.
        resolved._dynamo_marked_constant = True  # type: ignore[attr-defined]
        self.resolved = resolved

    def reset(self, environ: Optional[Mapping[str, str]] = None) -> None:
        """Forget cached choices and read the environment override again (default
        ``os.environ``); for tests and tools that change it after import."""
        environ = os.environ if environ is None else environ
        self.env_override = environ.get(self.env_var) or None
        self._resolved.clear()

    def requested(self, impl: Optional[str]) -> str:
        """``impl``, else the environment override, else ``auto``, normalised; ``ValueError``
        naming the source and the choices when it is not one of them."""
        requested = (impl or self.env_override or "auto").strip().lower()
        if requested not in self.choices:
            source = "impl argument" if impl else f"${self.env_var}"
            raise ValueError(
                f"unknown {self.what} implementation {requested!r} (from the {source}); "
                f"choose one of {', '.join(self.choices)}"
            )
        return requested

    def resolve(self, impl: Optional[str], device: torch.device) -> str:
        """The concrete path for ``impl`` on ``device``, not cached (errors as :meth:`requested`
        and the switch's own availability checks)."""
        return self._pick(self.requested(impl), torch.device(device))


def all_switches() -> Dict[str, PathSwitch]:
    """The switches made so far, by environment variable."""
    return dict(_SWITCHES)


def backend_available(package: str) -> bool:
    """Whether ``import package`` would work (without importing it), unless
    :func:`assume_backends` says otherwise."""
    if package in _ASSUMED:
        return _ASSUMED[package]
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def triton_interpreted(kernel_module: str) -> bool:
    """True when the Triton kernels of ``kernel_module`` run (or will run) on CPU tensors through
    the interpreter: decided when that module is imported, so ask it once it is."""
    if "triton_interpreter" in _ASSUMED:
        return _ASSUMED["triton_interpreter"]
    module = sys.modules.get(kernel_module)
    if module is not None:
        return bool(getattr(module, "INTERPRETED", False))
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and backend_available("triton")


@contextlib.contextmanager
def assume_backends(**available: bool) -> Iterator[None]:
    """Within the block, pretend that packages are (not) importable, e.g.
    ``assume_backends(triton=False)``; ``triton_interpreter=`` pretends about Triton's CPU
    interpreter. Every switch forgets its cached choices on entry and exit (for tests)."""
    saved = dict(_ASSUMED)
    _ASSUMED.update(available)
    for switch in _SWITCHES.values():
        switch._resolved.clear()
    try:
        yield
    finally:
        _ASSUMED.clear()
        _ASSUMED.update(saved)
        for switch in _SWITCHES.values():
            switch._resolved.clear()


@contextlib.contextmanager
def counting_ops() -> Iterator[None]:
    """Within the block the dispatchers call one registered custom op each
    (``plainmamba::zigzag_scan``, ``plainmamba::ms_deform_attn``), forward only, so that a
    ``torch.jit`` trace shows each call as one node with its input shapes (FLOP analysis)."""
    previous = _COUNTING[0]
    _COUNTING[0] = True
    try:
        yield
    finally:
        _COUNTING[0] = previous


def counting_active() -> bool:
    """Whether :func:`counting_ops` is active."""
    return _COUNTING[0]


def keeps_plain_ops() -> bool:
    """Whether the current call is traced, compiled or counted: there the CPU kernels step aside
    for PyTorch's operators, so that exported graphs, ``torch.compile`` and FLOP counts see them."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or counting_active()


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run the block outside any ``torch.jit`` trace (the custom ops' bodies under analysis:
    tensors cached across calls, like the scan orders, would otherwise belong to a finished
    subgraph and the next trace lookup would fail)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)
