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
import time
from typing import List

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(
    REPO, "configs", "quickstart", "mask_rcnn_plainmamba_adapter_tiny_shapes.py"
)
MIN_AP50 = 30.0


def visualize(cfg, checkpoint: str, out_dir: str, num: int, threshold: float = 0.5) -> List[str]:
    """Draw ground truth and predictions of ``checkpoint`` on ``num`` validation images."""
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    from plainmamba.checkpoint import PlainMambaCheckpointer

    model = instantiate(cfg.model).eval()
    PlainMambaCheckpointer(model).load(checkpoint)
    mapper = instantiate(cfg.dataloader.test.mapper)
    name = cfg.dataloader.evaluator.dataset_name
    metadata = MetadataCatalog.get(name)
    records = [r for r in DatasetCatalog.get(name) if r["annotations"]][:num]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for record in records:
        image = read_image(record["file_name"], format="RGB")
        with torch.no_grad():
            instances = model([mapper(dict(record))])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= threshold]
        truth = Visualizer(image, metadata, scale=3.0).draw_dataset_dict(record).get_image()
        pred = Visualizer(image, metadata, scale=3.0).draw_instance_predictions(instances)
        canvas = np.concatenate([truth, pred.get_image()], axis=1)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0])
        Image.fromarray(canvas).save(path + ".png")
        written.append(path + ".png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "shapes_demo"))
    parser.add_argument("--num-vis", type=int, default=6, help="validation images to draw")
    parser.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = parser.parse_args(argv)

    from detectron2.config import LazyConfig

    from plainmamba.engine import default_train_argument_parser
    from plainmamba.engine import main as train_main

    overrides = [f"train.output_dir={args.output_dir}", *args.opts]
    train_args = default_train_argument_parser().parse_args(["--config-file", CONFIG, *overrides])
    start = time.time()
    results = train_main(train_args) or {}
    minutes = (time.time() - start) / 60

    cfg = LazyConfig.load(CONFIG)
    cfg = LazyConfig.apply_overrides(cfg, overrides)
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
