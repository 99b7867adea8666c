#!/usr/bin/env python
"""Build only mamba-ssm's ``selective_scan_cuda`` for one GPU arch, for the baseline comparison.

mamba-ssm's own build compiles every extension for many archs (tens of minutes). The released
PlainMamba needs only ``selective_scan_fn``, so this compiles that extension from the sdist for
``TORCH_CUDA_ARCH_LIST`` (default 9.0, the H100) and lays out a minimal importable ``mamba_ssm``
package (the scan interface and what it imports) next to the built module:

    MAX_JOBS=12 python dev/benchmarks/build_mamba_ext.py .whl/mamba_ssm-2.3.2.post1.tar.gz /tmp/mamba
    PYTHONPATH=/tmp/mamba python -c "from mamba_ssm.ops.selective_scan_interface import \\
        selective_scan_fn"

Nothing of mamba-ssm is kept in this repository; the sdist is fetched with
``pip download mamba-ssm --no-deps --no-binary :all: --no-build-isolation -d .whl``.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tarfile
import time

# The pieces of the package that ``mamba_ssm.ops.selective_scan_interface`` imports.
_PACKAGE_FILES = (
    "mamba_ssm/ops/selective_scan_interface.py",
    "mamba_ssm/ops/triton/layer_norm.py",
    "mamba_ssm/utils/torch.py",
    "mamba_ssm/utils/determinism.py",
)
_SOURCES = (
    "selective_scan.cpp",
    "selective_scan_fwd_fp32.cu",
    "selective_scan_fwd_fp16.cu",
    "selective_scan_fwd_bf16.cu",
    "selective_scan_bwd_fp32_real.cu",
    "selective_scan_bwd_fp32_complex.cu",
    "selective_scan_bwd_fp16_real.cu",
    "selective_scan_bwd_fp16_complex.cu",
    "selective_scan_bwd_bf16_real.cu",
    "selective_scan_bwd_bf16_complex.cu",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", help="mamba_ssm-*.tar.gz")
    parser.add_argument("out", help="directory to put on PYTHONPATH")
    args = parser.parse_args(argv)

    import torch
    from torch.utils.cpp_extension import load

    src_root = os.path.join(args.out, "_src")
    with tarfile.open(args.sdist) as tar:
        tar.extractall(src_root, filter="data")
    (root,) = glob.glob(os.path.join(src_root, "mamba_ssm-*"))
    for rel in _PACKAGE_FILES:
        dst = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(os.path.join(root, rel), dst)
    for pkg in ("mamba_ssm", "mamba_ssm/ops", "mamba_ssm/ops/triton", "mamba_ssm/utils"):
        init = os.path.join(args.out, pkg, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()

    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")
    major, minor = arch.split(".")
    csrc = os.path.join(root, "csrc", "selective_scan")
    build_dir = os.path.join(args.out, "_build")
    os.makedirs(build_dir, exist_ok=True)
    start = time.time()
    load(
        name="selective_scan_cuda",
        sources=[os.path.join(csrc, s) for s in _SOURCES],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=[
            "-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr",
            "--expt-extended-lambda", "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__",
            "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
            f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}",
        ],  # fmt: skip
        extra_include_paths=[csrc],
        build_directory=build_dir,
        verbose=False,
    )
    (built,) = glob.glob(os.path.join(build_dir, "selective_scan_cuda*.so"))
    shutil.copy(built, args.out)
    print(f"built {os.path.basename(built)} for sm_{major}{minor} in {time.time() - start:.0f}s "
          f"(torch {torch.__version__})")  # fmt: skip
    sys.path.insert(0, args.out)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401

    return 0


if __name__ == "__main__":
    sys.exit(main())
