#!/usr/bin/env python
"""Convert a released PlainMamba checkpoint (classifier or detector) into a Detectron2 checkpoint.

    python tools/convert_official_checkpoint.py plainmamba_l1.pth output/l1_d2.pth [--ema]
    python tools/convert_official_checkpoint.py maskrcnn_l1.pth output/maskrcnn_l1_d2.pth \\
        [--task mask_rcnn] [--config-file configs/COCO/...py]

What the file holds is detected from its keys (``--task auto``): an MMClassification classifier,
or an MMDetection Mask R-CNN / RetinaNet. A classifier is checked key by key against the model of
``configs/ImageNet/plainmamba_l{1,2,3}_300e.py`` (picked from the checkpoint's shapes, or given
with ``--config-file``) before it is written; a detector is checked against the model of
``--config-file`` when one is given. The result loads with ``DetectionCheckpointer``.
Errors (unreadable file, unrecognised or missing keys, a model that does not fit) exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("auto", "classification", "mask_rcnn", "retinanet")


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="released checkpoint (.pth): {'state_dict': ...} or bare")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth)")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="what the checkpoint holds (default: detected from its keys)",
    )
    parser.add_argument(
        "--ema", action="store_true", help="use the ema_* copies of the weights (classification)"
    )
    parser.add_argument(
        "--config-file",
        default=None,
        help="LazyConfig whose model must accept the result (default for classification: the "
        "ImageNet config of the size found in the checkpoint; detectors: no check)",
    )
    args = parser.parse_args(argv)

    from detectron2.config import LazyConfig, instantiate

    from plainmamba.checkpoint import (
        CheckpointError,
        check_state_dict,
        convert_mmdet_detector,
        convert_official_classification,
        detect_mmdet_kind,
        infer_arch,
        is_mmdet_detector,
        load_official_file,
        released_state_dict,
        save_detectron2_checkpoint,
    )

    try:
        ckpt = load_official_file(args.input)
        released, _ = released_state_dict(ckpt, args.input)
        detector = is_mmdet_detector(released)
        task = args.task
        if task == "auto":
            task = detect_mmdet_kind(released, args.input) if detector else "classification"
        config = args.config_file
        if task == "classification":
            if detector:
                raise CheckpointError(
                    f"{args.input}: holds an MMDetection detector, not a classifier; "
                    f"use --task auto, mask_rcnn or retinanet"
                )
            state = convert_official_classification(ckpt, use_ema=args.ema, source=args.input)
            arch = infer_arch(state)
            if config is None:
                if arch is None:
                    raise CheckpointError(
                        f"{args.input}: not one of the published sizes L1/L2/L3; pass --config-file"
                    )
                config = os.path.join(
                    REPO, "configs", "ImageNet", f"plainmamba_{arch.lower()}_300e.py"
                )
        else:
            if args.ema:
                raise CheckpointError("--ema applies to classification checkpoints only")
            state = convert_mmdet_detector(ckpt, kind=task, source=args.input)
            arch = infer_arch(state)
        if config is not None:
            check_state_dict(instantiate(LazyConfig.load(config).model), state, source=args.input)
        save_detectron2_checkpoint(state, args.output)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_params = sum(v.numel() for k, v in state.items() if k.startswith("backbone."))
    checked = (
        f"checked against {os.path.relpath(config)}"
        if config is not None
        else "not checked against a model (pass --config-file)"
    )
    print(
        f"wrote {args.output}: {task}, {len(state)} tensors, PlainMamba-{arch or 'custom'}, "
        f"{checked} ({n_params / 1e6:.2f} M backbone values)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
