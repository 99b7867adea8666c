#!/usr/bin/env python
"""`make demo`: build PlainMamba-L1 from its config and run it on the bundled sample image.

    python projects/quickstart/quickstart.py [--config-file CFG] [--image PATH] [--weights CKPT]

Prints the feature-map shapes, the logits shape, the parameter count and the time per image.
Without ``--weights`` the model is randomly initialised (the released weights cannot be
downloaded here); with a converted checkpoint it prints the top-5 ImageNet class indices.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file", default=os.path.join(REPO, "configs", "ImageNet", "plainmamba_l1_300e.py")
    )
    parser.add_argument("--image", default=os.path.join(HERE, "sample.png"))
    parser.add_argument("--weights", default=None, help="converted or released checkpoint")
    parser.add_argument("--size", type=int, default=224, help="shorter side after resizing")
    args = parser.parse_args(argv)

    from detectron2.config import LazyConfig, instantiate

    from plainmamba.checkpoint import PlainMambaCheckpointer
    from plainmamba.ops import resolve_impl

    cfg = LazyConfig.load(args.config_file)
    if not args.weights:
        # Show segmentation-style taps; their norms are not part of a classification checkpoint.
        depth = cfg.model.backbone.depth
        cfg.model.backbone.out_indices = [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, -1]
    model = instantiate(cfg.model).eval()
    if args.weights:
        PlainMambaCheckpointer(model).load(args.weights)

    try:
        image = Image.open(args.image).convert("RGB")
    except OSError as err:
        print(f"error: cannot read image {args.image}: {err}", file=sys.stderr)
        return 2
    scale = args.size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, H, W) uint8 RGB

    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    print(f"config   {os.path.relpath(args.config_file, REPO)}")
    print(f"image    {os.path.relpath(args.image, REPO)} -> {tuple(tensor.shape)}")
    print(f"params   backbone {n_backbone / 1e6:.2f} M, with classifier {n_total / 1e6:.2f} M")
    print(f"scan     {resolve_impl(model.backbone.layers[0].mamba.scan_impl, torch.device('cpu'))}")

    with torch.inference_mode():
        model([{"image": tensor}])  # warm-up (first call compiles the Numba kernels)
        x = model.preprocess_image([{"image": tensor}])
        times = []
        for _ in range(5):
            start = time.perf_counter()
            tokens, maps = model.backbone.forward_features(x)
            logits = model.head(tokens)
            times.append(time.perf_counter() - start)
    for name, fmap in maps.items():
        print(f"feature  {name:8s} {tuple(fmap.shape)}  (stride {model.backbone.patch_size})")
    print(f"logits   {tuple(logits.shape)}")
    print(f"time     {1e3 * sorted(times)[len(times) // 2]:.1f} ms per image "
          f"({torch.get_num_threads()} threads, median of 5)")  # fmt: skip
    if args.weights:
        top = logits[0].softmax(-1).topk(5)
        print(
            "top-5    "
            + ", ".join(f"{i}: {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
