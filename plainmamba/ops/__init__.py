"""Operators of PlainMamba: each has a plain reference and fast paths chosen at runtime.

Path choices go through one :class:`~plainmamba.ops.switch.PathSwitch` per operator; the Triton
kernels' tuning is one :class:`~plainmamba.ops.tuning.TritonSettings` (docs/ops.md).
"""

from .dwconv import (
    DWCONV_ENV_VAR,
    DWCONV_IMPLS,
    DWCONV_SWITCH,
    dwconv2d_silu,
    dwconv2d_silu_ref,
    resolve_dwconv_impl,
)
from .ms_deform_attn import (
    MSDA_ENV_VAR,
    MSDA_IMPLS,
    MSDA_SWITCH,
    ms_deform_attn,
    ms_deform_attn_ref,
    resolve_msda_impl,
)
from .scan_orders import scan_orders
from .switch import PathSwitch, all_switches, assume_backends, counting_ops
from .tuning import (
    TritonSettings,
    default_triton_settings,
    env_overrides,
    set_triton_settings,
    triton_settings,
    use_triton_settings,
)
from .zigzag_scan import (
    ENV_VAR,
    SCAN_IMPLS,
    SCAN_SWITCH,
    available_impls,
    resolve_impl,
    zigzag_scan,
    zigzag_scan_ref,
)

__all__ = [
    "dwconv2d_silu",
    "dwconv2d_silu_ref",
    "resolve_dwconv_impl",
    "DWCONV_IMPLS",
    "DWCONV_ENV_VAR",
    "DWCONV_SWITCH",
    "ms_deform_attn",
    "ms_deform_attn_ref",
    "resolve_msda_impl",
    "MSDA_IMPLS",
    "MSDA_ENV_VAR",
    "MSDA_SWITCH",
    "scan_orders",
    "zigzag_scan",
    "zigzag_scan_ref",
    "available_impls",
    "resolve_impl",
    "SCAN_IMPLS",
    "SCAN_SWITCH",
    "ENV_VAR",
    "PathSwitch",
    "all_switches",
    "assume_backends",
    "counting_ops",
    "TritonSettings",
    "default_triton_settings",
    "env_overrides",
    "set_triton_settings",
    "triton_settings",
    "use_triton_settings",
]
