#!/usr/bin/env python
"""Convert a released PlainMamba classification checkpoint into a Detectron2 checkpoint.

    python tools/convert_official_checkpoint.py plainmamba_l1.pth output/l1_d2.pth [--ema]

The result loads with ``DetectionCheckpointer`` into the model of
``configs/ImageNet/plainmamba_l{1,2,3}_300e.py`` (picked from the checkpoint's shapes, or given
with ``--config-file``), and is checked against that model key by key before it is written.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="released checkpoint (.pth): {'state_dict': ...} or bare")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth)")
    parser.add_argument("--ema", action="store_true", help="use the ema_* copies of the weights")
    parser.add_argument(
        "--config-file",
        default=None,
        help="LazyConfig whose model must accept the result (default: the ImageNet config of "
        "the size found in the checkpoint)",
    )
    args = parser.parse_args(argv)

    from detectron2.config import LazyConfig, instantiate

    from plainmamba.checkpoint import (
        CheckpointError,
        check_state_dict,
        convert_official_classification,
        infer_arch,
        save_detectron2_checkpoint,
    )

    try:
        state = convert_official_classification(args.input, use_ema=args.ema)
        arch = infer_arch(state)
        config = args.config_file
        if config is None:
            if arch is None:
                raise CheckpointError(
                    f"{args.input}: not one of the published sizes L1/L2/L3; pass --config-file"
                )
            config = os.path.join(REPO, "configs", "ImageNet", f"plainmamba_{arch.lower()}_300e.py")
        check_state_dict(instantiate(LazyConfig.load(config).model), state, source=args.input)
        save_detectron2_checkpoint(state, args.output)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_params = sum(v.numel() for k, v in state.items() if k.startswith("backbone."))
    print(
        f"wrote {args.output}: {len(state)} tensors, PlainMamba-{arch or 'custom'}, "
        f"checked against {os.path.relpath(config)} ({n_params / 1e6:.2f} M backbone values)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
