#!/usr/bin/env python
"""Compile the Triton scan kernels for a Hopper GPU on a machine without one, and report.

    python dev/benchmarks/kernel_report.py --block 32 64

For each kernel: the register layouts Triton chose, the warp shuffles and barriers in its PTX
(sums over the states should need none: the states stay inside a thread), and the registers and
spills that Triton's bundled ``ptxas`` reports for sm_90a. It costs no GPU time; the layouts
come from the local Triton, which may differ in detail from the GPU host's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

_HALF_INPUTS = ("u_ptr", "dl_ptr", "gy_ptr")
_ALIGNED_INTS = ("sb_b", "sb_l", "sc_b", "sc_l")


def compile_report(fn, constexprs: dict, num_warps: int, tmp: str, num_stages: int = 3) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    sig, attrs = {}, {}
    for n in names:
        if n in constexprs:
            sig[n] = "constexpr"
        elif n.endswith("_ptr"):
            sig[n] = "*bf16" if n in _HALF_INPUTS else ("*i32" if n == "od_ptr" else "*fp32")
            attrs[(names.index(n),)] = [["tt.divisibility", 16]]
        else:
            sig[n] = "i32"
            if n in _ALIGNED_INTS:  # multiples of 16 at run time, which Triton specialises on
                attrs[(names.index(n),)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages),
    )
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    path = os.path.join(tmp, "k.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = re.search(r"\.target (\S+)", ptx).group(1)
    info = subprocess.run([ptxas, f"-arch={target}", "-v", path, "-o", os.devnull],
                          capture_output=True, text=True).stderr  # fmt: skip
    regs = re.search(r"Used (\d+) registers", info)
    spills = re.search(r"(\d+) bytes spill stores", info)
    return dict(
        layouts=sorted(set(re.findall(r"#ttg\.blocked<\{([^}]*)\}>", ttgir))),
        shuffles=ptx.count("shfl.sync"),
        barriers=ptx.count("bar.sync"),
        registers=int(regs.group(1)) if regs else None,
        spill_bytes=int(spills.group(1)) if spills else None,
    )


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--states", type=int, default=16)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--scans", type=int, nargs="+", default=[4, 2, 1],
                        help="scans per program of the scan kernels")  # fmt: skip
    args = parser.parse_args(argv)

    from plainmamba.ops import zigzag_scan_triton_kernels as zk

    kernels = []
    for s in args.scans:
        kernels += [
            (f"forward S={s}", zk.zz_fwd_kernel,
             dict(S=s, HAS_INIT=False, WRITE_Y=True, WRITE_STATE=False, STORE=True)),
            (f"bwd reverse S={s}", zk.zz_bwd_rev_kernel,
             dict(S=s, HAS_CARRY=False, MAIN=True, STORE=True, LANES=True)),
            (f"bwd forward S={s}", zk.zz_bwd_fwd_kernel, dict(S=s, HAS_INIT=False, LANES=True)),
        ]  # fmt: skip
    kernels += [
        ("forward, chunked", zk.zz_fwd_kernel,
         dict(S=4, HAS_INIT=True, WRITE_Y=True, WRITE_STATE=False, STORE=True)),
        ("chunk carry", zk.zz_carry_kernel, dict(REVERSE=True)),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for block in args.block:
            for name, fn, flags in kernels:
                const = dict(NP=args.states, BE=block, **flags)
                r = compile_report(fn, const, max(1, block // 32), tmp, args.stages)
                print(f"BE={block:3d} {name:18s} regs={r['registers']} spill={r['spill_bytes']}B "
                      f"shfl={r['shuffles']} bar={r['barriers']}")  # fmt: skip
                for layout in r["layouts"]:
                    print(f"      {layout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
