"""A training data stream whose every random draw is a function of (seed, position).

``--resume`` must continue a run exactly: the same samples in the same batches, augmented with
the same random numbers, as the uninterrupted run would have used. Saving the random state of
every data-loader worker does not work (workers run ahead of training, and their state is not
reachable from the trainer), so nothing here depends on state that evolves:

* which samples form batch ``k`` of a rank depends only on the seed, the rank and ``k``
  (:class:`~plainmamba.data.ResumableTrainingSampler` and the optional aspect-ratio grouping,
  which is decided on the samples' recorded sizes before any image is read);
* slot ``j`` of batch ``k`` is mapped with Python's ``random``, NumPy's global generator and
  torch's CPU generator all seeded from ``(seed, rank, k, j)``; the previous states are restored
  afterwards.

So a resume needs only the seed and the iteration, and the batches do not depend on
``num_workers``: 0, 1 or 8 workers produce the same tensors. Augmentations that keep generators
of their own (``np.random.default_rng()`` objects built once) are not covered.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .samplers import ResumableTrainingSampler

__all__ = [
    "ResumableBatchStream",
    "build_resumable_train_loader",
    "derive_seed",
    "seed_all_rngs",
    "seeded_rngs",
]

logger = logging.getLogger(__name__)

# Domains of derive_seed, so that a sample seed never equals an iteration seed.
SAMPLE_DOMAIN = 1
ITERATION_DOMAIN = 2
_MAX_RETRIES = 10


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (NumPy's ``SeedSequence``)."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _seed_cpu_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.random.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Run the body with ``random``, ``np.random`` and torch's CPU generator seeded from
    ``seed``; their previous states are restored afterwards. CUDA generators are not touched."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    _seed_cpu_rngs(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def seed_all_rngs(seed: int) -> None:
    """Seed ``random``, ``np.random`` and torch's generators on every device from ``seed``."""
    _seed_cpu_rngs(seed)
    torch.manual_seed(seed)  # CUDA too (lazily, if it is not initialised yet)


def _aspect_buckets(records: Sequence[Dict[str, Any]]) -> np.ndarray:
    buckets = np.empty(len(records), dtype=np.int8)
    for i, r in enumerate(records):
        if "width" not in r or "height" not in r:
            where = r.get("file_name", r.get("image_id", i))
            raise ValueError(
                f"aspect_ratio_grouping needs 'width' and 'height' in every record; {where} has "
                "none. Pass aspect_ratio_grouping=False for this data set"
            )
        # Detectron2's AspectRatioGroupedDataset: landscape in bucket 0, the rest in bucket 1.
        buckets[i] = 0 if r["width"] > r["height"] else 1
    return buckets


class ResumableBatchStream(IterableDataset):
    """This rank's endless stream of mapped batches; the loader yields one batch per item.

    Batch ``k`` is the ``k``-th slice of ``batch_size`` indices of ``sampler`` or, with
    ``aspect_ratio_grouping``, the ``k``-th batch that grouping the index stream by aspect
    ratio completes (Detectron2's two buckets, decided on the records' ``width`` and
    ``height``). Data-loader worker ``w`` of ``n`` maps the batches with ``(k - start) % n == w``,
    which is the order in which the loader collects them. A mapper returning ``None`` makes the slot retry with
    another index drawn from the slot's seed.

    Args:
        dataset: records (a list is wrapped in Detectron2's ``DatasetFromList``) or a dataset.
        mapper: record -> model input (or ``None`` to skip the record).
        sampler: the per-rank index stream.
        batch_size: images per batch on this rank.
        aspect_ratio_grouping: group batches by orientation (needs ``width`` and ``height``).
    """

    def __init__(
        self,
        dataset: Union[List[Dict[str, Any]], torch.utils.data.Dataset],
        mapper: Callable[[Any], Any],
        sampler: ResumableTrainingSampler,
        batch_size: int,
        aspect_ratio_grouping: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._buckets = _aspect_buckets(dataset) if aspect_ratio_grouping else None
        self.dataset = (
            DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
        )
        self.mapper = mapper
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.aspect_ratio_grouping = bool(aspect_ratio_grouping)
        self._start_iter = 0

    @property
    def seed(self) -> int:
        """The seed of the sample order and of the augmentation (the sampler's)."""
        return self.sampler.seed

    @property
    def seed_given(self) -> bool:
        """Whether the seed came from the caller rather than a random draw."""
        return self.sampler.seed_given

    def set_seed(self, seed: int) -> None:
        """Use ``seed`` for the order and the augmentation from the next iteration over this."""
        self.sampler.set_seed(seed)

    @property
    def start_iter(self) -> int:
        """The batch the next iteration over this stream begins with."""
        return self._start_iter

    def set_start_iter(self, iteration: int) -> None:
        """Begin the next iteration over this stream with batch ``iteration``."""
        if iteration < 0:
            raise ValueError(f"start iteration must be >= 0, got {iteration}")
        self._start_iter = int(iteration)

    def index_batches(self, start: int = 0) -> Iterator[List[int]]:
        """The dataset indices of batches ``start, start + 1, ...`` (no images are read)."""
        b = self.batch_size
        if self._buckets is None:
            self.sampler.set_start(start * b)
            indices = iter(self.sampler)
            while True:  # the sampler never ends
                yield list(itertools.islice(indices, b))
        else:
            # Grouped batches depend on every index before them: replay the grouping from the
            # start of the stream (integers only, so cheap even late in a long run).
            self.sampler.set_start(0)
            pending: List[List[int]] = [[], []]
            k = 0
            for idx in self.sampler:
                bucket = pending[self._buckets[idx]]
                bucket.append(idx)
                if len(bucket) == b:
                    if k >= start:
                        yield list(bucket)
                    k += 1
                    bucket.clear()

    def _map_slot(self, idx: int, seed: int) -> Any:
        for attempt in range(_MAX_RETRIES):
            with seeded_rngs(derive_seed(seed, attempt) if attempt else seed):
                out = self.mapper(self.dataset[idx])
            if out is not None:
                return out
            # Deterministic replacement, so that a resume picks the same one.
            idx = random.Random(derive_seed(seed, attempt, len(self.dataset))).randrange(
                len(self.dataset)
            )
        raise RuntimeError(
            f"the mapper returned None for {_MAX_RETRIES} records in a row; check the data set"
        )

    def __iter__(self) -> Iterator[List[Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        seed, rank = self.sampler.seed, self.sampler.rank
        start = self._start_iter
        batches = self.index_batches(start)
        for k, indices in enumerate(batches, start):
            if (k - start) % num_workers != worker:
                continue
            yield [
                self._map_slot(idx, derive_seed(seed, SAMPLE_DOMAIN, rank, k, j))
                for j, idx in enumerate(indices)
            ]


def _keep_batch(batch: List[Any]) -> List[Any]:
    # DataLoader's default (default_convert) would turn NumPy arrays inside records into tensors.
    return batch


def build_resumable_train_loader(
    dataset: Union[List[Dict[str, Any]], torch.utils.data.Dataset],
    mapper: Callable[[Any], Any],
    total_batch_size: int,
    num_workers: int = 0,
    seed: Optional[int] = None,
    shuffle: bool = True,
    aspect_ratio_grouping: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A train loader over a :class:`ResumableBatchStream`: lists of mapped records per step.

    Takes the arguments of Detectron2's ``build_detection_train_loader`` that matter for a
    single data set. ``seed=None`` draws one shared by all ranks; the engine replaces it by
    ``train.seed``, or on ``--resume`` by the seed the checkpoint holds. Extra ``kwargs`` go to
    ``torch.utils.data.DataLoader`` (``pin_memory``, ``prefetch_factor``, ...).
    """
    world = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world:
        raise ValueError(
            f"total_batch_size={total_batch_size} must be a positive multiple of the number of "
            f"processes ({world})"
        )
    batch_size = total_batch_size // world
    sampler = ResumableTrainingSampler(len(dataset), shuffle=shuffle, seed=seed)
    stream = ResumableBatchStream(dataset, mapper, sampler, batch_size, aspect_ratio_grouping)
    logger.info(
        "Resumable train loader: %d images per step and process, %d workers, grouping by aspect "
        "ratio %s",
        batch_size,
        num_workers,
        "on" if aspect_ratio_grouping else "off",
    )
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_keep_batch,
        worker_init_fn=worker_init_reset_seed,
        **kwargs,
    )
