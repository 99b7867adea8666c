#!/usr/bin/env python
"""Convert a released PlainMamba checkpoint (classifier, detector or UperNet) for Detectron2.

    python tools/convert_official_checkpoint.py plainmamba_l1.pth output/l1_d2.pth [--ema]
    python tools/convert_official_checkpoint.py maskrcnn_l1.pth output/maskrcnn_l1_d2.pth \\
        [--task mask_rcnn] [--config-file configs/COCO/...py]
    python tools/convert_official_checkpoint.py l1_upernet.pth output/upernet_l1_d2.pth \\
        [--task upernet] [--config-file configs/ADE20K/upernet_plainmamba_l1_160k.py]

What the file holds is detected from its keys (``--task auto``): an MMClassification classifier,
an MMDetection Mask R-CNN / RetinaNet, or an MMSegmentation UperNet (``decode_head.*``). A
classifier is checked key by key against the model of
``configs/ImageNet/plainmamba_l{1,2,3}_300e.py`` (picked from the checkpoint's shapes, or given
with ``--config-file``) before it is written; a detector or UperNet is checked against the model
of ``--config-file`` when one is given. The result loads with ``DetectionCheckpointer``.
Errors (unreadable file, unrecognised or missing keys, a model that does not fit, a pickle that
would run code) exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("auto", "classification", "mask_rcnn", "retinanet", "upernet")


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
        "ImageNet config of the size found in the checkpoint; detectors, UperNets: no check)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle the input without restrictions (it can then run code): only for files "
        "you trust that the safe loader refuses",
    )
    args = parser.parse_args(argv)
    # Checked before the (slow) load: torch.save into a folder fails only after converting.
    if os.path.isdir(args.output):
        print(
            f"error: {args.output} is a folder; give the checkpoint file to write", file=sys.stderr
        )
        return 2

    from detectron2.config import LazyConfig, instantiate

    from plainmamba.checkpoint import (
        CheckpointError,
        check_state_dict,
        convert_mmdet_detector,
        convert_mmseg_upernet,
        convert_official_classification,
        detect_mmdet_kind,
        infer_arch,
        is_mmdet_detector,
        is_mmseg_upernet,
        load_official_file,
        released_state_dict,
        save_detectron2_checkpoint,
    )

    try:
        ckpt = load_official_file(args.input, trusted=args.trust_checkpoint)
        released, _ = released_state_dict(ckpt, args.input)
        segmentor = is_mmseg_upernet(released)
        detector = not segmentor and is_mmdet_detector(released)
        task = args.task
        if task == "auto":
            if segmentor:
                task = "upernet"
            else:
                task = detect_mmdet_kind(released, args.input) if detector else "classification"
        config = args.config_file
        if task == "classification":
            if detector or segmentor:
                held = "an MMSegmentation UperNet" if segmentor else "an MMDetection detector"
                raise CheckpointError(
                    f"{args.input}: holds {held}, not a classifier; use --task auto, "
                    f"mask_rcnn, retinanet or upernet"
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
            if task == "upernet":
                state = convert_mmseg_upernet(ckpt, source=args.input)
            else:
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
