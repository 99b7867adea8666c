#!/usr/bin/env python
"""Inference latency of a PlainMamba config beside timm's DeiT-Tiny, measured in the same run.

    python tools/benchmark.py                                   # L1, 224x224, batch 1, 2 threads
    python tools/benchmark.py --config-file configs/ImageNet/plainmamba_l2_300e.py \
        --sizes 224 320 --batch 1 --threads 2 --scan numba ref --json output/bench.json

Runs alternate between the models (round-robin) so that machine noise hits both alike; the
figure is the median over ``--iters`` timed calls after warm-up. The ratio is PlainMamba / DeiT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "ImageNet", "plainmamba_l1_300e.py")


def build_plainmamba(config: str, scan: str) -> torch.nn.Module:
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(config)
    cfg.model.backbone.scan_impl = scan
    return instantiate(cfg.model).eval()


def time_round_robin(
    fns: Dict[str, Callable[[], object]], warmup: int, iters: int
) -> Dict[str, float]:
    """Median milliseconds per call of each function, calls interleaved."""
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(iters):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scan", nargs="+", default=["numba"], help="scan paths to time")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--no-deit", action="store_true", help="skip the DeiT-Tiny baseline")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    import timm

    models = {f"plainmamba[{s}]": build_plainmamba(args.config_file, s) for s in args.scan}
    deit = None if args.no_deit else timm.create_model("deit_tiny_patch16_224").eval()
    results = []
    print(
        f"# {os.path.relpath(args.config_file, REPO)} | batch {args.batch} | float32 | "
        f"{args.threads} threads | torch {torch.__version__} | {platform.processor() or platform.machine()}"
    )
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)
        fns: Dict[str, Callable[[], object]] = {
            name: (lambda m=m, x=x: m.head(m.backbone.forward_features(x)[0]))
            for name, m in models.items()
        }
        if deit is not None:
            deit_x = x if size == 224 else torch.nn.functional.interpolate(x, size=(224, 224))
            fns["deit_tiny_patch16_224"] = lambda x=deit_x: deit(x)
        times = time_round_robin(fns, args.warmup, args.iters)
        base = times.get("deit_tiny_patch16_224")
        for name, ms in times.items():
            ratio = (
                f"{ms / base:5.2f}x DeiT-Tiny" if base and name != "deit_tiny_patch16_224" else ""
            )
            print(
                f"{size:5d}px  {name:24s} {ms:9.2f} ms  {args.batch * 1e3 / ms:8.1f} img/s  {ratio}"
            )
            results.append(
                dict(
                    size=size,
                    model=name,
                    batch=args.batch,
                    ms=ms,
                    ratio_to_deit=(ms / base) if base else None,
                )
            )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                dict(config=args.config_file, threads=args.threads, results=results), f, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
