"""The thread count of the Numba kernels, kept equal to PyTorch's."""

from __future__ import annotations

import numba
import torch

__all__ = ["sync_threads"]


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
