"""Operators of PlainMamba: each has a plain reference and fast paths chosen at runtime."""

from .dwconv import DWCONV_ENV_VAR, DWCONV_IMPLS, dwconv2d_silu, dwconv2d_silu_ref
from .ms_deform_attn import MSDA_ENV_VAR, MSDA_IMPLS, ms_deform_attn, ms_deform_attn_ref
from .scan_orders import scan_orders
from .zigzag_scan import (
    ENV_VAR,
    SCAN_IMPLS,
    available_impls,
    resolve_impl,
    zigzag_scan,
    zigzag_scan_ref,
)

__all__ = [
    "dwconv2d_silu",
    "dwconv2d_silu_ref",
    "DWCONV_IMPLS",
    "DWCONV_ENV_VAR",
    "ms_deform_attn",
    "ms_deform_attn_ref",
    "MSDA_IMPLS",
    "MSDA_ENV_VAR",
    "scan_orders",
    "zigzag_scan",
    "zigzag_scan_ref",
    "available_impls",
    "resolve_impl",
    "SCAN_IMPLS",
    "ENV_VAR",
]
