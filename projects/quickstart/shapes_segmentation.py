#!/usr/bin/env python
"""`make demo-seg`: train a small UperNet on PlainMamba on generated segmentation shapes.

    python projects/quickstart/shapes_segmentation.py [--output-dir DIR] [--num-vis N] [--seed S]
        [--threads T] [KEY=VALUE ...]

1. draws a semantic-segmentation data set (circles, squares, triangles and rings on textured
   backgrounds, label maps with 255 ignore bands) under ``$DETECTRON2_DATASETS/shapes_seg``
   (default ``datasets/shapes_seg``) and registers it;
2. trains ``configs/quickstart/upernet_plainmamba_tiny_shapes.py`` on the CPU with Detectron2's
   trainer (the code path of ``tools/lazyconfig_train_net.py``);
3. evaluates with ``SemSegEvaluator`` and prints mIoU beside the mIoU of predicting background
   everywhere (chance);
4. writes ``DIR/vis/*.png``: ground truth (left) beside the prediction (right), drawn by
   Detectron2's ``Visualizer``.

``--seed`` sets ``train.seed`` (default 0): the same seed gives the same numbers on the same
machine with the same thread count. Extra ``KEY=VALUE`` arguments override the config. Exits with
status 1 if the mIoU does not beat the all-background mIoU by 10 points.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

import numpy as np
import torch

from demo_utils import (
    REPO,
    add_common_arguments,
    load_trained,
    run_summary,
    save_side_by_side,
    set_threads,
    train_config,
    val_records,
)

CONFIG = os.path.join(REPO, "configs", "quickstart", "upernet_plainmamba_tiny_shapes.py")
MARGIN = 10.0


def background_miou(cfg) -> float:
    """mIoU (%) of predicting class 0 everywhere on the evaluator's data set."""
    from detectron2.data import MetadataCatalog

    from plainmamba.data import SemSegLabelReader

    meta = MetadataCatalog.get(cfg.dataloader.evaluator.dataset_name)
    read = SemSegLabelReader()
    labelled = background = 0
    for record in val_records(cfg, num=10**9):
        label = read(record["sem_seg_file_name"], dtype=np.int64)
        valid = label != meta.ignore_label
        labelled += int(valid.sum())
        background += int(((label == 0) & valid).sum())
    # background IoU = background / labelled; every other class has IoU 0
    return 100.0 * background / max(labelled, 1) / len(meta.stuff_classes)


def visualize(cfg, checkpoint: str, out_dir: str, num: int) -> List[str]:
    """Draw ground truth and prediction of ``checkpoint`` on ``num`` validation images."""
    from detectron2.config import instantiate
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    from plainmamba.data import SemSegLabelReader

    model = load_trained(cfg, checkpoint)
    mapper = instantiate(cfg.dataloader.test.mapper)
    metadata = MetadataCatalog.get(cfg.dataloader.evaluator.dataset_name)
    written = []
    for record in val_records(cfg, num):
        image = read_image(record["file_name"], format="RGB")
        truth = SemSegLabelReader()(record["sem_seg_file_name"], dtype=np.int64)
        with torch.no_grad():
            scores = model([mapper(dict(record))])[0]["sem_seg"]
        pred = scores.argmax(0).cpu().numpy()
        left = Visualizer(image, metadata, scale=3.0).draw_sem_seg(truth, alpha=0.6).get_image()
        right = Visualizer(image, metadata, scale=3.0).draw_sem_seg(pred, alpha=0.6).get_image()
        captions = ("ground truth", "prediction (argmax)")
        written.append(save_side_by_side(left, right, out_dir, record["file_name"], captions))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, "shapes_seg_demo", num_vis=6)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    cfg, results, minutes = train_config(CONFIG, args.output_dir, args.opts, seed=args.seed)
    final = os.path.join(args.output_dir, "model_final.pth")
    pngs = visualize(cfg, final, os.path.join(args.output_dir, "vis"), args.num_vis)
    miou = float(results.get("sem_seg", {}).get("mIoU", float("nan")))
    chance = background_miou(cfg)

    print("\nUperNet on PlainMamba, generated segmentation shapes (CPU)")
    print(f"  trained and evaluated in {minutes:.1f} min ({run_summary(cfg)}); checkpoint {final}")
    print(f"  mIoU {miou:.1f} (all-background prediction: {chance:.1f})")
    print(f"  {len(pngs)} visualisations (ground truth | prediction) under {args.output_dir}/vis")
    if not miou >= chance + MARGIN:
        print(
            f"  mIoU is not {MARGIN} points above chance: the model did not learn", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
