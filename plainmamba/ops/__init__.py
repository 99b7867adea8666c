"""Operators of PlainMamba: each has a plain reference and fast paths chosen at runtime."""

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
    "scan_orders",
    "zigzag_scan",
    "zigzag_scan_ref",
    "available_impls",
    "resolve_impl",
    "SCAN_IMPLS",
    "ENV_VAR",
]
