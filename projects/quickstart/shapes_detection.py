#!/usr/bin/env python
"""`make demo`, detection part: train a small PlainMamba-Adapter Mask R-CNN on generated shapes.

    python projects/quickstart/shapes_detection.py [--output-dir DIR] [--num-vis N] [--seed S]
        [--threads T] [--vis-threshold P] [KEY=VALUE ...]

1. draws a COCO-format data set of coloured circles, squares and triangles (train/val, boxes and
   masks) under ``$DETECTRON2_DATASETS/shapes`` (default ``datasets/shapes``) and registers it;
2. trains ``configs/quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py`` on the CPU with
   Detectron2's trainer (the code path of ``tools/lazyconfig_train_net.py``);
3. evaluates with ``COCOEvaluator`` and prints box and mask AP;
4. writes ``DIR/vis/*.png``: for validation images, the ground truth (left) beside the
   predictions that score at least ``--vis-threshold`` (right, with their scores), drawn by
   Detectron2's ``Visualizer``.

``--seed`` sets ``train.seed`` (default 0): the same seed gives the same numbers on the same
machine with the same thread count. Extra ``KEY=VALUE`` arguments override the config, e.g.
``train.max_iter=100``. Exits with status 1 if the trained model's box AP50 is under 30 (it did
not learn).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

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

CONFIG = os.path.join(REPO, "configs", "quickstart", "mask_rcnn_plainmamba_adapter_tiny_shapes.py")
MIN_AP50 = 30.0
# Predictions drawn in the pictures (COCO evaluation uses every detection above 0.05).
VIS_THRESHOLD = 0.5


def visualize(
    cfg, checkpoint: str, out_dir: str, num: int, threshold: float = VIS_THRESHOLD
) -> List[str]:
    """Draw ground truth and the predictions of ``checkpoint`` scoring at least ``threshold``
    on the first ``num`` validation images that hold shapes."""
    from detectron2.config import instantiate
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    model = load_trained(cfg, checkpoint)
    mapper = instantiate(cfg.dataloader.test.mapper)
    metadata = MetadataCatalog.get(cfg.dataloader.evaluator.dataset_name)
    written = []
    for record in val_records(cfg, num, keep=lambda r: r["annotations"]):
        image = read_image(record["file_name"], format="RGB")
        with torch.no_grad():
            instances = model([mapper(dict(record))])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= threshold]
        truth = Visualizer(image, metadata, scale=3.0).draw_dataset_dict(record).get_image()
        pred = Visualizer(image, metadata, scale=3.0).draw_instance_predictions(instances)
        captions = (
            f"ground truth: {len(record['annotations'])} shapes",
            f"prediction: {len(instances)} with score >= {threshold:.2f}",
        )
        written.append(
            save_side_by_side(truth, pred.get_image(), out_dir, record["file_name"], captions)
        )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, "shapes_demo", num_vis=6)
    parser.add_argument(
        "--vis-threshold", type=float, default=VIS_THRESHOLD, help="score of predictions drawn"
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)

    cfg, results, minutes = train_config(CONFIG, args.output_dir, args.opts, seed=args.seed)
    final = os.path.join(args.output_dir, "model_final.pth")
    vis_dir = os.path.join(args.output_dir, "vis")
    pngs = visualize(cfg, final, vis_dir, args.num_vis, args.vis_threshold)

    bbox, segm = results.get("bbox", {}), results.get("segm", {})
    print("\nPlainMamba-Adapter Mask R-CNN on generated shapes (CPU)")
    print(f"  trained and evaluated in {minutes:.1f} min ({run_summary(cfg)}); checkpoint {final}")
    print(
        f"  box AP {bbox.get('AP', float('nan')):.1f}  AP50 {bbox.get('AP50', float('nan')):.1f}"
        f"   mask AP {segm.get('AP', float('nan')):.1f}  AP50 {segm.get('AP50', float('nan')):.1f}"
    )
    print(f"  {len(pngs)} visualisations (ground truth | prediction) under {args.output_dir}/vis")
    if not bbox.get("AP50", 0.0) >= MIN_AP50:
        print(f"  box AP50 is under {MIN_AP50}: the model did not learn", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
