"""Glue between PyTorch and the Numba kernels: the thread count, and tensors as NumPy views."""

from __future__ import annotations

from typing import Tuple

import numba
import numpy as np
import torch

__all__ = ["sync_threads", "flat_view"]


def sync_threads() -> int:
    """Give Numba's pool PyTorch's intra-op thread count (capped by ``NUMBA_NUM_THREADS``) and
    return it: the two pools share the cores, so they must not oversubscribe them."""
    torch_threads = torch.get_num_threads()
    want = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
    if torch.get_num_threads() != torch_threads:
        # Starting numba's OpenMP pool resets the process's OpenMP thread count, which is also
        # PyTorch's: torch.set_num_threads would be undone in the middle of the first step, and
        # a run would not repeat exactly (e.g. after --resume).
        torch.set_num_threads(torch_threads)
    return want


def flat_view(t: torch.Tensor) -> Tuple[np.ndarray, int, int]:
    """A float32 (batch, L, E) tensor with unit channel stride as a 1-D NumPy view of its storage
    from its first element, with its batch and token strides in elements; copies only tensors of
    other dtypes or strides. Kernels index it at constant offsets from a row's start, which
    vectorises where a strided 3-D view would not."""
    if t.dtype != torch.float32 or t.stride(-1) != 1:
        t = t.float().contiguous()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return torch.as_strided(t.detach(), (span,), (1,)).numpy(), t.stride(0), t.stride(1)
