#!/usr/bin/env python
"""Train PlainMamba-L1 for a few hundred steps on generated data with each scan path.

Every path starts from the same weights and sees the same batches (seeded per step), so the
loss curves should agree within the noise of bf16 autocast and of the order of atomic adds:

    python dev/benchmarks/train_curve.py --impls triton mamba --iters 300 --json curves.json

The data: ``--classes`` smooth random colour patterns (8x8 noise upsampled to 224x224), each
image one pattern under heavy Gaussian noise; the label is the pattern.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import List

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def batch_for(step: int, templates: torch.Tensor, batch: int, noise_scale: float):
    g = torch.Generator(device=templates.device).manual_seed(10_000 + step)
    labels = torch.randint(0, templates.shape[0], (batch,), generator=g, device=templates.device)
    noise = torch.randn((batch,) + templates.shape[1:], generator=g, device=templates.device)
    return templates[labels] + noise_scale * noise, labels


def train(impl: str, args, templates: torch.Tensor) -> dict:
    from plainmamba.modeling import PlainMamba

    torch.manual_seed(0)
    trunk = PlainMamba(embed_dim=192, depth=24, num_stem_convs=1, dwconv_layers=[0],
                       drop_path_rate=0.0, scan_impl=impl)  # fmt: skip
    head = torch.nn.Linear(192, args.classes)
    model = torch.nn.ModuleDict(dict(trunk=trunk, head=head)).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    losses: List[float] = []
    start = time.time()
    for step in range(args.iters):
        x, y = batch_for(step, templates, args.batch, args.noise)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model["head"](model["trunk"].forward_features(x)[0].mean(1))
            loss = F.cross_entropy(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    losses = [float(v) for v in torch.stack(losses).cpu()]
    seconds = time.time() - start
    print(f"{impl}: {args.iters} steps in {seconds:.1f}s, loss {losses[0]:.3f} -> "
          f"{statistics.mean(losses[-20:]):.3f} (mean of last 20)", flush=True)  # fmt: skip
    return dict(impl=impl, losses=losses, seconds=seconds)


def smooth(values: List[float], width: int) -> List[float]:
    return [statistics.mean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impls", nargs="+", default=["triton", "mamba"])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--noise", type=float, default=2.5, help="noise std (patterns: ~1)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    g = torch.Generator(device="cuda").manual_seed(1)
    coarse = torch.randn(args.classes, 3, 8, 8, generator=g, device="cuda")
    templates = F.interpolate(coarse, size=(224, 224), mode="bicubic", align_corners=False)
    runs = [train(impl, args, templates) for impl in args.impls]
    summary = {}
    if len(runs) >= 2:
        a, b = (smooth(r["losses"], 20) for r in runs[:2])
        diffs = [abs(x - y) for x, y in zip(a, b)]
        summary = dict(
            pair=[r["impl"] for r in runs[:2]],
            max_abs_diff_smoothed20=max(diffs),
            mean_abs_diff_smoothed20=statistics.mean(diffs),
            final_mean20=[statistics.mean(r["losses"][-20:]) for r in runs[:2]],
            loss_at=[{s: round(r["losses"][s], 4) for s in (0, 49, 99, 199, args.iters - 1)
                      if s < args.iters} for r in runs[:2]],
        )  # fmt: skip
        print(json.dumps(summary), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), runs=runs, summary=summary), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
