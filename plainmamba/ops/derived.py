"""Tensors derived from parameters, kept between inference calls until the parameter changes.

CPU inference spends time re-deriving the same small tensors from parameters on every call
(``-exp(A_log)``, transposed or permuted weights). :func:`derived` keeps the result beside the
source tensor and rebuilds it when the source has been written in place (an optimizer step,
``load_state_dict``: both bump the tensor's version counter), given new data (``module.to``)
or replaced.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Tuple

import torch

__all__ = ["derived"]

_Entries = Dict[str, Tuple[Tuple[int, ...], Any, Tuple[torch.Tensor, ...]]]
# id(source) -> (weak reference to source, {name: (source version, derived tensor)}). Keyed by
# id because tensors compare elementwise; an entry goes when its source is freed.
_STORE: Dict[int, Tuple["weakref.ref[torch.Tensor]", _Entries]] = {}


def _forget(ref: "weakref.ref[torch.Tensor]", key: int) -> None:
    slot = _STORE.get(key)
    if slot is not None and slot[0] is ref:
        del _STORE[key]


def derived(
    source: torch.Tensor, name: str, build: Callable[[torch.Tensor], Any], *also: torch.Tensor
) -> Any:
    """``build(source)`` computed once per version of ``source`` (and of the tensors ``also``
    that ``build`` reads besides it: parameters, which the entry keeps alive), without autograd.

    For inference paths only: the result is detached, so call it where no gradient has to reach
    the sources. ``name`` tells apart several results derived from one source; the entry is kept
    with ``source`` and goes when it is freed.
    """
    if source.is_inference() or any(t.is_inference() for t in also):
        # No version counter to tell an in-place change: build afresh every time.
        with torch.no_grad():
            return build(source.detach())
    key = id(source)
    slot = _STORE.get(key)
    if slot is None or slot[0]() is not source:
        slot = _STORE[key] = (weakref.ref(source, lambda ref: _forget(ref, key)), {})
    entries = slot[1]
    # The version counter tells in-place writes; the data pointer tells ``.data`` replaced
    # (``module.to(...)`` swaps it without touching the counter).
    version = tuple(v for t in (source,) + also for v in (id(t), t._version, t.data_ptr()))
    hit = entries.get(name)
    if hit is not None and hit[0] == version:
        return hit[1]
    with torch.no_grad():
        value = build(source.detach())
    # Holding the other sources keeps their ids, which the version key names, from reuse.
    entries[name] = (version, value, also)
    return value
