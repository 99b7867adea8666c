"""Tuning of the Triton kernels (scan and depthwise conv) as one frozen settings object.

The settings in force are resolved once per GPU architecture: that architecture's defaults
(:func:`default_triton_settings`), then the environment overrides, which are read once, when
this module is imported (:data:`ENV_VARS`; docs/ops.md). Code can pass settings explicitly
(``zigzag_scan(..., triton_settings=...)``, ``dwconv2d_silu(..., triton_settings=...)``) or make
them the process default with :func:`set_triton_settings` / :func:`use_triton_settings`; explicit
settings are used as they are, without the environment.

The kernels receive the settings as arguments of their custom ops, so eager and compiled runs
use the same values. Like the path switches, the settings are read when a model is traced by
``torch.compile``: set them before the first compiled call.

This module does not import Triton: tools report the settings on any machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch

__all__ = [
    "TritonSettings",
    "ENV_VARS",
    "env_overrides",
    "default_triton_settings",
    "triton_settings",
    "set_triton_settings",
    "use_triton_settings",
]

KERNELS = ("fwd", "rev", "bf")  # the scan's forward, the backward's reverse and forward passes

# Environment overrides, each of one or a few fields (docs/ops.md#tuning-the-triton-kernels).
BLOCK_ENV = "PLAINMAMBA_TRITON_BLOCK"
BLOCK_BWD_ENV = "PLAINMAMBA_TRITON_BLOCK_BWD"
CHUNK_ENV = "PLAINMAMBA_TRITON_CHUNK"
SCANS_ENV = "PLAINMAMBA_TRITON_SCANS"
MAXNREG_ENV = "PLAINMAMBA_TRITON_MAXNREG"
SCATTER_ENV = "PLAINMAMBA_TRITON_SCATTER"
STATS_ENV = "PLAINMAMBA_TRITON_STATS"
DWCONV_BLOCK_ENV = "PLAINMAMBA_DWCONV_BLOCK"
DWCONV_CHUNK_ENV = "PLAINMAMBA_DWCONV_CHUNK"
ENV_VARS = (
    BLOCK_ENV, BLOCK_BWD_ENV, CHUNK_ENV, SCANS_ENV, MAXNREG_ENV, SCATTER_ENV, STATS_ENV,
    DWCONV_BLOCK_ENV, DWCONV_CHUNK_ENV,
)  # fmt: skip

DWCONV_MAX_ROWS = 8  # output rows of a dwconv program: each is a named accumulator


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclass(frozen=True)
class TritonSettings:
    """Tuning of the Triton kernels; every field has the measured default.

    Scan (``plainmamba/ops/zigzag_scan_triton.py``):
        scan_block: channels per program (a power of two >= 16; 32 = one warp).
        scan_block_bwd: the same for the backward; ``None`` = ``scan_block``.
        scan_chunk: steps per chunk; ``None`` = chosen from the batch and the GPU's size.
        scans_fwd, scans_rev, scans_bf: scan orders per program (1, 2 or 4) of the forward, the
            backward's reverse pass and its forward recompute.
        maxnreg_fwd, maxnreg_rev, maxnreg_bf: register caps (0: the compiler's choice, else
            24-255).
        scan_scatter: ``store`` (one output slab per scan, summed afterwards) or ``atomic``.
        record_stats: record each compiled kernel's registers and spills (benchmarks).

    Depthwise conv (``plainmamba/ops/dwconv_triton.py``):
        dwconv_tile: (rows, columns, channels) of every kernel's tile; ``None`` = per grid.
        dwconv_wgrad_images: images per weight-gradient program; ``None`` = per GPU size.
    """

    scan_block: int = 32
    scan_block_bwd: Optional[int] = None
    scan_chunk: Optional[int] = None
    scans_fwd: int = 4
    scans_rev: int = 2
    scans_bf: int = 4
    # ptxas takes all 255 registers for the forward when allowed, which cuts the warps a
    # multiprocessor holds from 12 to 8; at 160 it spills at most a few bytes and 12 warps fit.
    # The forward recompute at four scans a program takes 226 (9 warps); at 168 it spills 16
    # bytes outside its loop and 12 warps fit, 1.45x faster than two-scan programs
    # (docs/performance.md).
    maxnreg_fwd: int = 160
    maxnreg_rev: int = 0
    maxnreg_bf: int = 168
    scan_scatter: str = "store"
    record_stats: bool = False
    dwconv_tile: Optional[Tuple[int, int, int]] = None
    dwconv_wgrad_images: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("scan_block", "scan_block_bwd"):
            block = getattr(self, name)
            if block is not None and (block < 16 or not _pow2(block)):
                raise ValueError(f"{name} must be a power of two >= 16, got {block}")
        if self.scan_chunk is not None and self.scan_chunk < 1:
            raise ValueError(f"scan_chunk must be >= 1, got {self.scan_chunk}")
        for kernel in KERNELS:
            if self.scans(kernel) not in (1, 2, 4):
                raise ValueError(f"scans_{kernel} must be 1, 2 or 4, got {self.scans(kernel)}")
            cap = self.max_registers(kernel)
            if not (cap == 0 or 24 <= cap <= 255):
                raise ValueError(f"maxnreg_{kernel} must be 0 or 24-255, got {cap}")
        if self.scan_scatter not in ("store", "atomic"):
            raise ValueError(f"scan_scatter must be 'store' or 'atomic', got {self.scan_scatter!r}")
        if self.dwconv_tile is not None:
            tile = tuple(self.dwconv_tile)
            if (len(tile) != 3 or not 1 <= tile[0] <= DWCONV_MAX_ROWS
                    or not (_pow2(tile[1]) and _pow2(tile[2]))):  # fmt: skip
                raise ValueError(
                    f"dwconv_tile must be (rows, columns, channels) with rows 1-{DWCONV_MAX_ROWS} "
                    f"and the others powers of two, got {self.dwconv_tile}"
                )
            object.__setattr__(self, "dwconv_tile", tuple(int(v) for v in tile))
        if self.dwconv_wgrad_images is not None and self.dwconv_wgrad_images < 1:
            raise ValueError(f"dwconv_wgrad_images must be >= 1, got {self.dwconv_wgrad_images}")

    def scans(self, kernel: str) -> int:
        """Scan orders per program of ``kernel`` (``fwd``, ``rev``, ``bf``)."""
        return int(getattr(self, f"scans_{kernel}"))

    def max_registers(self, kernel: str) -> int:
        """Register cap of ``kernel`` (``fwd``, ``rev``, ``bf``); 0 leaves it to the compiler."""
        return int(getattr(self, f"maxnreg_{kernel}"))

    def block(self, backward: bool = False) -> int:
        """Channels per scan program, of the backward when ``backward``."""
        if backward and self.scan_block_bwd is not None:
            return self.scan_block_bwd
        return self.scan_block

    def replace(self, **changes) -> "TritonSettings":
        """A copy with ``changes`` (checked like the constructor's arguments)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, object]:
        """The fields as plain values (JSON reports)."""
        out = dataclasses.asdict(self)
        if self.dwconv_tile is not None:
            out["dwconv_tile"] = list(self.dwconv_tile)
        return out

    def with_env(self, environ: Mapping[str, str]) -> "TritonSettings":
        """These settings with the overrides of :data:`ENV_VARS` found in ``environ`` applied;
        ``ValueError`` naming the variable for a malformed value."""
        changes: Dict[str, object] = {}
        for var in ENV_VARS:
            raw = (environ.get(var) or "").strip()
            if raw:
                try:
                    changes.update(_parse(var, raw, self))
                except ValueError as err:
                    raise ValueError(f"${var}: {err}") from None
        if not changes:
            return self
        try:
            return self.replace(**changes)
        except ValueError as err:
            names = ", ".join(f"${v}" for v in ENV_VARS if environ.get(v))
            raise ValueError(f"{err} (from {names})") from None


def _per_kernel(raw: str, prefix: str, current: TritonSettings, valid) -> Dict[str, int]:
    # "fwd:160,rev:0": per-kernel values; the kernels not named keep theirs.
    example = ",".join(f"{k}:{getattr(current, prefix + k)}" for k in KERNELS)
    out = {}
    for item in filter(None, raw.split(",")):
        name, _, value = item.strip().partition(":")
        if name not in KERNELS or not value.isdigit() or not valid(int(value)):
            raise ValueError(f"expected items like {example}, got {item!r}")
        out[prefix + name] = int(value)
    return out


def _parse(var: str, raw: str, current: TritonSettings) -> Dict[str, object]:
    if var in (BLOCK_ENV, BLOCK_BWD_ENV):
        if not raw.isdigit() or int(raw) < 16 or not _pow2(int(raw)):
            raise ValueError(f"must be a power of two >= 16, got {raw!r}")
        return {"scan_block" if var == BLOCK_ENV else "scan_block_bwd": int(raw)}
    if var in (CHUNK_ENV, DWCONV_CHUNK_ENV):
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"must be a positive integer, got {raw!r}")
        return {"scan_chunk" if var == CHUNK_ENV else "dwconv_wgrad_images": int(raw)}
    if var == SCANS_ENV:
        return _per_kernel(raw, "scans_", current, lambda v: v in (1, 2, 4))
    if var == MAXNREG_ENV:
        return _per_kernel(raw, "maxnreg_", current, lambda v: v == 0 or 24 <= v <= 255)
    if var == SCATTER_ENV:
        if raw not in ("store", "atomic"):
            raise ValueError(f"must be 'store' or 'atomic', got {raw!r}")
        return {"scan_scatter": raw}
    if var == STATS_ENV:
        return {"record_stats": raw not in ("0", "false", "no")}
    if var == DWCONV_BLOCK_ENV:
        parts = [s.strip() for s in raw.split(",")]
        if (len(parts) != 3 or not all(s.isdigit() for s in parts)
                or not 1 <= int(parts[0]) <= DWCONV_MAX_ROWS
                or not (_pow2(int(parts[1])) and _pow2(int(parts[2])))):  # fmt: skip
            raise ValueError(
                f"must be 'rows,columns,channels' (rows 1-{DWCONV_MAX_ROWS}, the others powers "
                f"of two), got {raw!r}"
            )
        return {"dwconv_tile": tuple(int(s) for s in parts)}
    raise KeyError(var)


# Read once, at import: later changes to os.environ do not steer the kernels.
_ENV_AT_IMPORT: Dict[str, str] = {v: os.environ[v] for v in ENV_VARS if os.environ.get(v)}


def env_overrides() -> Dict[str, str]:
    """The override variables that were set when the package was imported."""
    return dict(_ENV_AT_IMPORT)


# Defaults by CUDA compute capability. They were measured on sm_90 (H100, H200; see
# docs/performance.md); other architectures use them too until measured.
_ARCH_DEFAULTS: Dict[Tuple[int, int], TritonSettings] = {}


def default_triton_settings(arch: Optional[Tuple[int, int]] = None) -> TritonSettings:
    """The defaults for a CUDA compute capability (``None``: none known, e.g. the CPU
    interpreter)."""
    return _ARCH_DEFAULTS.get(arch, TritonSettings()) if arch is not None else TritonSettings()


_EXPLICIT: list = [None]  # set_triton_settings()
_RESOLVED: Dict[str, TritonSettings] = {}


def _arch_of(device: str) -> Optional[Tuple[int, int]]:
    if device.startswith("cuda") and torch.cuda.is_available():
        return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore
    return None


def triton_settings(device: Optional[torch.device | str] = None) -> TritonSettings:
    """The settings in force for ``device`` (default: the current CUDA device, else CPU): those
    set by :func:`set_triton_settings`, else the architecture's defaults with the environment
    overrides, resolved once per device."""
    explicit = _EXPLICIT[0]
    if explicit is not None:
        return explicit
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = str(device)
    found = _RESOLVED.get(key)
    if found is None:
        found = _RESOLVED[key] = default_triton_settings(_arch_of(key)).with_env(_ENV_AT_IMPORT)
    return found


def set_triton_settings(settings: Optional[TritonSettings]) -> None:
    """Make ``settings`` the process default (``None``: back to defaults + overrides)."""
    if settings is not None and not isinstance(settings, TritonSettings):
        raise TypeError(f"expected TritonSettings or None, got {type(settings)}")
    _EXPLICIT[0] = settings


@contextlib.contextmanager
def use_triton_settings(settings: Optional[TritonSettings]) -> Iterator[TritonSettings]:
    """Within the block, ``settings`` are the process default (see :func:`set_triton_settings`)."""
    previous = _EXPLICIT[0]
    set_triton_settings(settings)
    try:
        yield triton_settings()
    finally:
        _EXPLICIT[0] = previous
