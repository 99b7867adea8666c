"""What ``--resume`` needs to continue a run exactly, and to leave its files as one run would.

* :class:`RunSeeds` is saved in every checkpoint (under ``"resume"``): the run's seed, the
  seed of the data stream and the iteration the stream continues with. Drawn seeds are kept
  there, so a run without ``train.seed`` resumes with the seeds it started with.
* :class:`IterationSeededLoader` reseeds Python's, NumPy's and torch's generators (every
  device) from ``(seed, rank, iteration)`` after fetching each batch, just before the forward
  pass. What the model draws (drop path, erasing, Mixup, proposal sampling) then depends on the
  iteration only, not on what ran before it (evaluation, data-loader start-up), which is why
  no generator state has to be saved.
* :func:`prune_metrics` removes the lines of ``metrics.json`` that the resumed run writes again.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterator, Optional

from detectron2.utils import comm

from ..checkpoint.atomic import atomic_write_text
from ..data.resumable import ITERATION_DOMAIN, derive_seed, seed_all_rngs

__all__ = ["IterationSeededLoader", "RunSeeds", "prune_metrics"]

logger = logging.getLogger("detectron2.plainmamba.engine")


class RunSeeds:
    """The seeds of a run and the data position, as a checkpointable (``"resume"`` key).

    Args:
        seed: ``train.seed``; ``None`` or negative means "draw one" (shared by all ranks).
        loader: the train loader; its stream's seed is set when it can take one.
    """

    def __init__(self, seed: Optional[int], loader: Any = None):
        self._config_seed = None if seed is None or int(seed) < 0 else int(seed)
        self.seed: Optional[int] = None
        self.data_seed: Optional[int] = None
        self.next_iter = 0
        self.restored = False
        self._stream = _stream_of(loader)

    def state_dict(self) -> Dict[str, Any]:
        return {"seed": self.seed, "data_seed": self.data_seed, "next_iter": self.next_iter}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.seed = None if state.get("seed") is None else int(state["seed"])
        self.data_seed = None if state.get("data_seed") is None else int(state["data_seed"])
        self.next_iter = int(state.get("next_iter", 0))
        self.restored = self.seed is not None

    def start(self, start_iter: int) -> None:
        """Settle the seeds before training starts at ``start_iter`` (all ranks call this)."""
        if not self.restored:
            if start_iter:
                logger.warning(
                    "The checkpoint holds no seeds (written by an older version?): the data "
                    "order and the random draws after iteration %d differ from the interrupted "
                    "run's",
                    start_iter,
                )
            # Every rank draws, so that the collective in shared_random_seed matches up.
            drawn = comm.shared_random_seed()
            self.seed = self._config_seed if self._config_seed is not None else int(drawn)
            if self._config_seed is None:
                logger.info("train.seed is not set: drew seed %d (saved in checkpoints)", drawn)
            stream = self._stream
            if stream is not None:
                self.data_seed = int(stream.seed) if stream.seed_given else self.seed
        elif self._config_seed is not None and self._config_seed != self.seed:
            logger.warning(
                "train.seed=%d, but the run being resumed used seed %d: continuing with %d",
                self._config_seed,
                self.seed,
                self.seed,
            )
        if self._stream is not None and self.data_seed is not None:
            self._stream.set_seed(self.data_seed)
        self.next_iter = start_iter


def _stream_of(loader: Any) -> Any:
    stream = getattr(loader, "dataset", None)
    if stream is not None and hasattr(stream, "set_start_iter") and hasattr(stream, "set_seed"):
        return stream
    return None


class IterationSeededLoader:
    """Wrap a train loader: after fetching batch ``i``, seed every generator from
    ``(seeds.seed, rank, i)`` and record ``i + 1`` as the next position in ``seeds``."""

    def __init__(self, loader: Any, seeds: RunSeeds):
        self.loader = loader
        self.seeds = seeds

    @property
    def dataset(self) -> Any:
        return getattr(self.loader, "dataset", None)

    def __iter__(self) -> Iterator[Any]:
        if self.seeds.seed is None:
            raise RuntimeError("RunSeeds.start() must run before iterating the train loader")
        iteration = self.seeds.next_iter
        rank = comm.get_rank()
        for batch in self.loader:
            seed_all_rngs(derive_seed(self.seeds.seed, ITERATION_DOMAIN, rank, iteration))
            iteration += 1
            self.seeds.next_iter = iteration
            yield batch


def prune_metrics(path: str, start_iter: int) -> int:
    """Drop the lines of a ``metrics.json`` for iterations ``>= start_iter`` (and lines cut
    short by a kill), rewriting the file atomically. Returns the number of lines dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and int(row.get("iteration", -1)) >= start_iter:
            continue
        kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped
