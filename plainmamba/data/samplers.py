"""A training sampler whose position in the data stream can be restored on resume."""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Optional

import torch
from detectron2.utils import comm
from torch.utils.data import Sampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(Sampler[int]):
    """Infinite per-rank stream of indices, epoch by epoch, that can start at any position.

    Each epoch is a fresh permutation of ``range(size)`` drawn from ``(seed, epoch)``, padded by
    wrapping to a multiple of the world size and split round-robin across ranks, so every rank
    sees ``ceil(size / world_size)`` indices per epoch and the ranks never overlap within an epoch.
    Because the stream is a pure function of the seed, :meth:`set_start` skips to any position
    without replaying it: after a resume at iteration ``i`` with ``b`` images per rank and step,
    ``set_start(i * b)`` continues with exactly the samples the interrupted run would have used.

    Args:
        size: number of samples in the data set.
        shuffle: permute each epoch (else ``0..size-1`` in order).
        seed: shared by all ranks; ``None`` draws one shared random seed.
        rank, world_size: this process's shard (default: from ``detectron2.utils.comm``).
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(
                f"ResumableTrainingSampler needs a positive data set size, got {size!r}"
            )
        self._size = size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._seed_given = seed is not None
        self._rank = comm.get_rank() if rank is None else int(rank)
        self._world_size = comm.get_world_size() if world_size is None else int(world_size)
        if not 0 <= self._rank < self._world_size:
            raise ValueError(f"rank {self._rank} outside world size {self._world_size}")
        self._start = 0

    @property
    def samples_per_epoch(self) -> int:
        """Indices each rank draws per epoch."""
        return math.ceil(self._size / self._world_size)

    @property
    def seed(self) -> int:
        """The seed of the permutations."""
        return self._seed

    @property
    def seed_given(self) -> bool:
        """Whether the seed was passed in rather than drawn."""
        return self._seed_given

    @property
    def rank(self) -> int:
        """The rank whose shard this sampler yields."""
        return self._rank

    def set_seed(self, seed: int) -> None:
        """Draw the permutations from ``seed`` from the next iteration over this sampler on."""
        self._seed = int(seed)
        self._seed_given = True

    def set_start(self, position: int) -> None:
        """Begin the next iteration over this sampler at ``position`` in this rank's stream."""
        if position < 0:
            raise ValueError(f"sampler position must be >= 0, got {position}")
        self._start = int(position)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``."""
        if self._shuffle:
            g = torch.Generator()
            g.manual_seed(self._seed + epoch)
            perm = torch.randperm(self._size, generator=g)
        else:
            perm = torch.arange(self._size)
        total = self.samples_per_epoch * self._world_size
        if total > self._size:
            perm = perm.repeat(math.ceil(total / self._size))[:total]
        return perm[self._rank : total : self._world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self._start, self.samples_per_epoch)
        for e in itertools.count(epoch):
            yield from self.epoch_indices(e)[offset:].tolist()
            offset = 0
