"""Top-k accuracy of image classifiers, gathered across processes."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["ClassificationEvaluator"]

logger = logging.getLogger(__name__)


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 / top-5 accuracy (in percent) of ``[{"logits": (K,)}]`` outputs against ``label``.

    Every process scores its own shard; ``evaluate`` gathers the per-image results to the main
    process, which returns ``{"classification": {"top1", "top5", "num_images"}}`` (other ranks
    return ``{}``, as Detectron2's evaluators do). Images are counted once each by ``image_id``,
    so a sampler that pads shards cannot inflate the score.

    Args:
        topk: the accuracies to report; a ``k > 1`` not below the number of classes is skipped.
        distributed: gather across processes.
        output_dir: where to write ``classification_predictions.json`` (top-k per image).
    """

    def __init__(
        self,
        topk: Sequence[int] = (1, 5),
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        if not topk or any(int(k) < 1 for k in topk):
            raise ValueError(f"topk must be positive integers, got {topk}")
        self._topk = tuple(sorted({int(k) for k in topk}))
        self._distributed = distributed
        self._output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        self._records: List[Dict[str, Any]] = []
        self._num_classes: Optional[int] = None

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        logits = torch.stack([o["logits"].detach().float().cpu() for o in outputs])
        self._num_classes = logits.shape[1]
        k = min(max(self._topk), logits.shape[1])
        top = logits.topk(k, dim=1).indices.tolist()
        for i, (record, pred) in enumerate(zip(inputs, top)):
            if "label" not in record:
                name = record.get("file_name", f"input {i}")
                raise KeyError(f"ClassificationEvaluator: {name} has no 'label'")
            image_id = record.get("image_id", record.get("file_name"))
            self._records.append(
                {"image_id": image_id, "label": int(record["label"]), "topk": pred}
            )

    def evaluate(self) -> Dict[str, Any]:
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._records, dst=0)
            classes = comm.gather(self._num_classes, dst=0)
            if not comm.is_main_process():
                return {}
            records = list(itertools.chain(*gathered))
            num_classes = next((c for c in classes if c is not None), None)
        else:
            records, num_classes = self._records, self._num_classes
        unique: Dict[Any, Dict[str, Any]] = OrderedDict()
        for r in records:
            unique.setdefault(r["image_id"] if r["image_id"] is not None else id(r), r)
        records = list(unique.values())
        if not records:
            logger.warning("ClassificationEvaluator received no predictions")
            return {}
        results: Dict[str, float] = {}
        for k in self._topk:
            if k > 1 and k >= num_classes:  # always 100%: reporting it would only mislead
                logger.info("Skipping top-%d accuracy: the model has %d classes", k, num_classes)
                continue
            hits = sum(r["label"] in r["topk"][:k] for r in records)
            results[f"top{k}"] = 100.0 * hits / len(records)
        results["num_images"] = len(records)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "classification_predictions.json")
            with PathManager.open(path, "w") as f:
                json.dump(records, f)
        return {"classification": results}
