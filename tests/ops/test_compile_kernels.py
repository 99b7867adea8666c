"""dev/compile_kernels.py (run by `make setup`) calls every Numba kernel the quick starts use."""

import importlib.util

from helpers import REPO
from plainmamba.ops import dwconv_numba, zigzag_scan_numba


def test_compile_kernels_runs_forward_backward_and_inference_kernels():
    spec = importlib.util.spec_from_file_location(
        "compile_kernels", REPO / "dev" / "compile_kernels.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seconds = module.compile_kernels()
    assert seconds > 0
    for kernel in ("_scan_fwd", "_scan_bwd", "_scan_infer"):
        assert getattr(zigzag_scan_numba, kernel).signatures, kernel
    assert dwconv_numba._dwconv7_silu.signatures
