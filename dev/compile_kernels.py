#!/usr/bin/env python
"""Compile the Numba kernels once, at set-up, so that the first run does not.

    python dev/compile_kernels.py

Numba compiles a kernel on its first call and caches the machine code next to the module
(``plainmamba/ops/__pycache__``); later processes load it. Without this step the first
``make demo`` spends about 40 s compiling. A small trunk on the CPU runs a training step (the
scan's forward and backward kernels) and an inference forward (the fused, gated scan and the
depthwise conv + SiLU), which are the kernels the quick starts and the tests call. Prints how
long it took; exits 0 when the Numba path is not available (the scan then has another path and
nothing is to be compiled).
"""

from __future__ import annotations

import sys
import time


def compile_kernels() -> float:
    """Run every Numba kernel once on small inputs; return the seconds taken."""
    from plainmamba.known_warnings import silence_known_warnings

    silence_known_warnings()  # before Detectron2 is imported
    import torch

    from plainmamba.modeling import PlainMamba

    start = time.perf_counter()
    torch.manual_seed(0)
    trunk = PlainMamba(
        img_size=32, patch_size=8, embed_dim=32, depth=1, dwconv_layers=[], scan_impl="numba"
    )
    image = torch.randn(2, 3, 32, 32)
    out = trunk(image)
    sum(v.sum() for v in out.values()).backward()
    trunk.eval()
    with torch.no_grad():
        trunk(image[:1])
    return time.perf_counter() - start


def main() -> int:
    try:
        import numba  # noqa: F401
    except ImportError:
        print("[setup] numba is not installed: no scan kernels to compile")
        return 0
    seconds = compile_kernels()
    print(f"[setup] Numba kernels compiled and cached in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
