#!/usr/bin/env python
"""`make demo-cls`: train a small PlainMamba classifier on generated shapes with the ImageNet recipe.

    python projects/quickstart/shapes_classification.py [--output-dir DIR] [--num-vis N] [--seed S]
        [--threads T] [KEY=VALUE ...]

1. draws a classification data set (circles, rings, squares, triangles and crosses, 64x64) under
   ``$DETECTRON2_DATASETS/shapes_cls`` (default ``datasets/shapes_cls``) as an image folder and as
   LMDB files, and registers both;
2. trains ``configs/quickstart/plainmamba_tiny_cls_shapes.py`` on the CPU with Detectron2's trainer
   (the code path of ``tools/lazyconfig_train_net.py``), with an EMA of the weights;
3. evaluates the model and its EMA with ``ClassificationEvaluator`` (top-1) against chance;
4. writes ``DIR/vis/*.png``: validation images with the true class and the top-2 predictions.

``--seed`` sets ``train.seed`` (default 0): the same seed gives the same numbers on the same
machine with the same thread count. Extra ``KEY=VALUE`` arguments override the config. Exits with
status 1 if top-1 does not beat chance (20%) by 30 points.
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
    set_threads,
    train_config,
)

CONFIG = os.path.join(REPO, "configs", "quickstart", "plainmamba_tiny_cls_shapes.py")
MARGIN = 30.0


def visualize(cfg, checkpoint: str, out_dir: str, num: int) -> List[str]:
    """Draw the true class and the model's top-2 guesses (with their probabilities) on ``num``
    validation images; the file name says whether the first guess is right."""
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    name = cfg.dataloader.test.dataset.names
    classes = MetadataCatalog.get(name).thing_classes
    model = load_trained(cfg, checkpoint)
    mapper = instantiate(cfg.dataloader.test.mapper)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for record in DatasetCatalog.get(name)[:num]:
        item = mapper(dict(record))
        with torch.no_grad():
            probs = model([item])[0]["logits"].softmax(-1)
        top = probs.topk(min(2, len(classes)))
        image = item["image"].permute(1, 2, 0).numpy()
        vis = Visualizer(image, scale=4.0)
        right = int(top.indices[0]) == item["label"]
        lines = [f"true: {classes[item['label']]}"] + [
            f"{classes[i]} {p:.0%}" for p, i in zip(top.values.tolist(), top.indices.tolist())
        ]
        vis.draw_text("\n".join(lines), (2, 2), horizontal_alignment="left", font_size=5)
        verdict = "right" if right else "wrong"
        path = os.path.join(out_dir, f"{len(written):03d}_{classes[item['label']]}_{verdict}.png")
        vis.get_output().save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, "shapes_cls_demo", num_vis=8)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    cfg, results, minutes = train_config(CONFIG, args.output_dir, args.opts, seed=args.seed)
    final = os.path.join(args.output_dir, "model_final.pth")
    pngs = visualize(cfg, final, os.path.join(args.output_dir, "vis"), args.num_vis)
    top1 = float(results.get("classification", {}).get("top1", float("nan")))
    ema_top1 = float(results.get("ema", {}).get("classification", {}).get("top1", float("nan")))
    chance = 100.0 / cfg.model.num_classes

    print("\nPlainMamba classifier, generated shapes (CPU)")
    print(f"  trained and evaluated in {minutes:.1f} min ({run_summary(cfg)}); checkpoint {final}")
    print(f"  top-1 {top1:.1f} (EMA of the weights: {ema_top1:.1f}; chance: {chance:.1f})")
    print(f"  {len(pngs)} visualisations under {args.output_dir}/vis")
    if not top1 >= chance + MARGIN:
        print(
            f"  top-1 is not {MARGIN} points above chance: the model did not learn", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
