#!/usr/bin/env python
"""`make demo`, detection part: train a small PlainMamba-Adapter Mask R-CNN on generated shapes.

    python projects/quickstart/shapes_detection.py [--output-dir DIR] [--num-vis N] [KEY=VALUE ...]

1. draws a COCO-format data set of coloured circles, squares and triangles (train/val, boxes and
   masks) under ``$DETECTRON2_DATASETS/shapes`` (default ``datasets/shapes``) and registers it;
2. trains ``configs/quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py`` on the CPU with
   Detectron2's trainer (the code path of ``tools/lazyconfig_train_net.py``);
3. evaluates with ``COCOEvaluator`` and prints box and mask AP;
4. writes ``DIR/vis/*.png``: for validation images, the ground truth (left) beside the
   predictions (right), drawn by Detectron2's ``Visualizer``.

Extra ``KEY=VALUE`` arguments override the config, e.g. ``train.max_iter=100``. Exits with status 1
if the trained model's box AP50 is under 30 (it did not learn).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

import torch

from demo_utils import REPO, load_trained, save_side_by_side, train_config, val_records

CONFIG = os.path.join(REPO, "configs", "quickstart", "mask_rcnn_plainmamba_adapter_tiny_shapes.py")
MIN_AP50 = 30.0


def visualize(cfg, checkpoint: str, out_dir: str, num: int, threshold: float = 0.5) -> List[str]:
    """Draw ground truth and predictions of ``checkpoint`` on ``num`` validation images."""
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
        written.append(save_side_by_side(truth, pred.get_image(), out_dir, record["file_name"]))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "shapes_demo"))
    parser.add_argument("--num-vis", type=int, default=6, help="validation images to draw")
    parser.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = parser.parse_args(argv)

    cfg, results, minutes = train_config(CONFIG, args.output_dir, args.opts)
    final = os.path.join(args.output_dir, "model_final.pth")
    pngs = visualize(cfg, final, os.path.join(args.output_dir, "vis"), args.num_vis)

    bbox, segm = results.get("bbox", {}), results.get("segm", {})
    print("\nPlainMamba-Adapter Mask R-CNN on generated shapes (CPU)")
    print(f"  trained and evaluated in {minutes:.1f} min; checkpoint {final}")
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
