"""The PlainMamba trunk (arXiv 2403.17695) as a Detectron2 backbone.

Module and parameter names follow the released MMClassification layout (``patch_embed``,
``pos_embed``, ``layers.i.mamba.*``, ``ln1``, ``norm_layer{i}``), so that a released state dict
loads after stripping its ``backbone.`` prefix. See docs/model.md for what is computed.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from timm.layers import DropPath, trunc_normal_

from ..ops import dwconv2d_silu, zigzag_scan
from ..ops.derived import derived
from ..ops.switch import counting_active
from ..ops.zigzag_scan import fuses_gate

__all__ = ["PlainMamba", "PlainMambaLayer", "PlainMambaMixer", "ConvPatchEmbed", "check_images"]

# Default of the ``cpu_fast_paths`` argument (fused gated scan, folded stem BNs in CPU inference).
# ``PLAINMAMBA_CPU_FAST=0`` overrides it, read once at import, for A/B timings and debugging
# (outputs agree within 1e-6); tools/benchmark.py reports it.
CPU_FAST_PATHS = os.environ.get("PLAINMAMBA_CPU_FAST", "1").strip() != "0"


def _cpu_fast(requested: Optional[bool]) -> bool:
    return CPU_FAST_PATHS if requested is None else bool(requested)


def check_images(x: torch.Tensor, in_chans: int, min_size: int, what: str = "input") -> None:
    """Raise ``ValueError`` naming the problem if ``x`` is not a usable (B, C, H, W) image batch.

    The finite-value check runs on CPU tensors only: on a GPU it would force a host sync.
    """
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{what}: expected a (B, {in_chans}, H, W) tensor, got {shape}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{what}: expected {in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{what}: image {x.shape[2]}x{x.shape[3]} is smaller than one {min_size}x{min_size} "
            f"patch"
        )
    if x.device.type == "cpu" and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: contains NaN or infinite values")


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv equal to bn(conv(x)) for a BN in eval mode (up to rounding)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


def _patch_rows(weight: torch.Tensor) -> torch.Tensor:
    """A (D, C, p, p) conv weight as (D, p * p * C) rows, in a channels-last patch's order."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()


def _negative_exp(A_log: torch.Tensor) -> torch.Tensor:
    return -torch.exp(A_log.float())


class ConvPatchEmbed(nn.Module):
    """Convolutional stem: 7x7/2 conv-BN-ReLU, ``num_convs`` 3x3 conv-BN-ReLU, 8x8/8 projection."""

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 192,
        num_convs: int = 1,
        patch_size: int = 16,
        cpu_fast_paths: Optional[bool] = None,
    ):
        super().__init__()
        # CPU inference folds each BN into its conv (None: the module default, CPU_FAST_PATHS).
        self.cpu_fast_paths = _cpu_fast(cpu_fast_paths)
        if patch_size % 2:
            raise ValueError(f"patch_size must be even, got {patch_size}")
        width = 64
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        convs: List[nn.Module] = []
        for _ in range(num_convs):
            convs += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            convs.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*convs) if convs else None
        self.proj_stride = patch_size // 2
        self.projection = nn.Conv2d(width, embed_dim, self.proj_stride, stride=self.proj_stride)

    def stem_conv(self, x: torch.Tensor, space_to_depth: bool) -> torch.Tensor:
        """The 7x7/2 conv of the stem; ``space_to_depth`` (on CUDA) computes it as a 4x4/1 conv
        over 2x2 pixel blocks, the same sums in another order.

        With 3 input channels cuDNN pads the input to 8 and takes a slow kernel (0.78 ms at
        batch 128 on an H200). Zero-padded to 4 channels and folded by 2x2 blocks, the input has
        16 channels, and the kernel's taps (padded to 8x8 by a zero row and column in front)
        fold the same way.
        """
        conv = self.stem[0]
        if not space_to_depth:
            return conv(x)
        height, width = x.shape[-2:]
        out_h, out_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        # 4 zeros in front (the conv's 3 plus the extra tap) and enough behind for 4x4 windows.
        x = F.pad(x, (4, 2 * out_w + 2 - width, 4, 2 * out_h + 2 - height, 0, -x.shape[1] % 4))
        x = F.pixel_unshuffle(x, 2).contiguous(memory_format=torch.channels_last)
        w = F.pad(conv.weight, (1, 0, 1, 0, 0, x.shape[1] // 4 - conv.weight.shape[1]))
        o, c = w.shape[:2]
        # (O, C, 8, 8) -> (O, C, 2x2 phases, 4, 4): tap 2m + p of each axis to phase p, tap m.
        w = w.view(o, c, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(o, 4 * c, 4, 4)
        return F.conv2d(x, w.to(x.dtype))

    def _conv_bn_pairs(self) -> List[Tuple[nn.Conv2d, nn.BatchNorm2d]]:
        convs = list(self.convs) if self.convs is not None else []
        return [(self.stem[0], self.stem[1])] + [
            (convs[i], convs[i + 1]) for i in range(0, len(convs), 3)
        ]

    def _folded_bn(self, x: torch.Tensor) -> bool:
        """Whether the stem runs with its BNs folded into the convs: CPU, every BN in eval, and
        not traced or counted (exported graphs and FLOP counts keep the released layers)."""
        return (
            self.cpu_fast_paths
            and x.device.type == "cpu"
            and not torch.jit.is_tracing()
            and not counting_active()
            and not any(m.training for m in self.modules() if isinstance(m, nn.BatchNorm2d))
        )

    def _project_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """The patch projection of a channels-last map as one matrix product, in token order.

        The projection's kernel equals its stride, so it is a (tokens, p * p * C) x (p * p * C,
        D) product over the map's patches; on the CPU this is faster than oneDNN's strided conv
        (4.1 against 5.6 ms for L1 at 224 px, one thread) and ends in token order without the
        conv output's permute.
        """
        p = self.proj_stride
        batch, channels = x.shape[:2]
        grid = (x.shape[2] // p, x.shape[3] // p)
        patches = (
            x.permute(0, 2, 3, 1)
            .reshape(batch, grid[0], p, grid[1], p, channels)
            .transpose(2, 3)
            .reshape(batch * grid[0] * grid[1], p * p * channels)
        )
        weight = self.projection.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            weight = _patch_rows(weight)
        else:  # inference: the same rows until the weight changes
            weight = derived(weight, "patch_rows", _patch_rows)
        tokens = torch.addmm(self.projection.bias, patches, weight.t())
        return tokens.view(batch, grid[0] * grid[1], -1), grid

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        # Channels-last convs are faster on CPU (oneDNN) and GPU, and end in token order.
        x = x.contiguous(memory_format=torch.channels_last)
        folded = self._folded_bn(x)
        if folded:
            # CPU inference: each conv with its BN folded in, then ReLU in place: no separate
            # BN pass and one full-resolution map fewer to allocate per conv.
            for conv, bn in self._conv_bn_pairs():
                weight, bias = _fold_bn(conv, bn)
                x = F.conv2d(x, weight, bias, conv.stride, conv.padding).relu_()
        else:
            x = self.stem[2](self.stem[1](self.stem_conv(x, space_to_depth=x.is_cuda)))
            if self.convs is not None:
                x = self.convs(x)
        # "Corner" padding as released: zeros on the right and bottom up to a multiple of 8.
        pad_h = -x.shape[2] % self.proj_stride
        pad_w = -x.shape[3] % self.proj_stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        if folded:
            return self._project_tokens(x)
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        if torch.jit.is_tracing():
            # The scan orders are built for one grid anyway; constant sizes keep the traced
            # reshapes static, which ONNX export needs (e.g. for UperNet's adaptive pools).
            hw = (int(hw[0]), int(hw[1]))
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], hw[0] * hw[1], x.shape[1]), hw


class PlainMambaMixer(nn.Module):
    """The 2D selective-scan mixer (released name ``mamba``), docs/model.md#the-mixer."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        conv_size: int = 7,
        bias: bool = True,
        conv_bias: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_impl: Optional[str] = None,
        dwconv_impl: Optional[str] = None,
        cpu_fast_paths: Optional[bool] = None,
    ):
        super().__init__()
        if conv_size % 2 != 1:
            raise ValueError(f"conv_size must be odd, got {conv_size}")
        self.d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        # Path names for plainmamba.ops (None: the environment override, else auto).
        self.scan_impl = scan_impl
        self.dwconv_impl = dwconv_impl
        # CPU inference through the fused gated Numba kernel (None: CPU_FAST_PATHS).
        self.cpu_fast_paths = _cpu_fast(cpu_fast_paths)
        e = self.d_inner
        self.in_proj = nn.Linear(dim, 2 * e, bias=bias)
        self.conv2d = nn.Conv2d(e, e, conv_size, padding=conv_size // 2, groups=e, bias=conv_bias)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True)
        self.out_proj = nn.Linear(e, dim, bias=bias)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.direction_Bs = nn.Parameter(torch.zeros(5, d_state))

        # Mamba's initialisation: dt_proj keeps variance, softplus(bias) spans [dt_min, dt_max].
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        trunc_normal_(self.direction_Bs, std=0.02)

    def project(self, xs: torch.Tensor, pad_rows: bool) -> Tuple[torch.Tensor, ...]:
        """x_proj and dt_proj: (delta before its bias, B, C) from the conv's output ``xs``.

        ``pad_rows`` (on CUDA) pads the projections' rows with zeros, which changes no value.
        """
        rank, n = self.dt_rank, self.d_state
        weight, dt_weight = self.x_proj.weight, self.dt_proj.weight
        sizes = [rank, n, n]
        if pad_rows and (rank % 8 or (2 * n) % 8):
            # Half-precision operands whose rows are not multiples of 8 values (16 bytes), like
            # x_proj's 44 outputs and dt_proj's 12 inputs, send cuBLAS to slow kernels. Zero
            # rows pad dt's block (and dt_proj's inputs) and the whole to multiples of 8.
            pad_dt = -rank % 8
            w_dt, w_bc = weight.split([rank, 2 * n])
            weight = torch.cat([F.pad(w_dt, (0, 0, 0, pad_dt)), w_bc])
            weight = F.pad(weight, (0, 0, 0, -weight.shape[0] % 8))
            dt_weight = F.pad(dt_weight, (0, pad_dt))
            sizes = [rank + pad_dt, n, n, weight.shape[0] - rank - pad_dt - 2 * n]
        dt, Bs, Cs = F.linear(xs, weight).split(sizes, dim=-1)[:3]
        # As released: dt_proj adds its bias here and the scan adds it again as delta_bias.
        return F.linear(dt, dt_weight, self.dt_proj.bias), Bs, Cs

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        batch, length, _ = x.shape
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        # The depthwise conv reads the tokens in place (a Triton kernel on CUDA); (B, L, E).
        xs = dwconv2d_silu(xs, self.conv2d.weight, self.conv2d.bias, hw, impl=self.dwconv_impl)
        dt, Bs, Cs = self.project(xs, pad_rows=xs.is_cuda)
        if self._fused_cpu_inference(xs):
            # A is the same from call to call until A_log changes.
            A = derived(self.A_log, "A", _negative_exp)
        else:
            A = _negative_exp(self.A_log)
        # The gate y * silu(z) goes to the scan: on the CPU in inference one Numba kernel runs
        # the softplus, the four scans, D * u and the gate (unless cpu_fast_paths is off).
        y = zigzag_scan(
            xs, dt, A, Bs, Cs, self.D, self.direction_Bs, self.dt_proj.bias, hw,
            impl=self.scan_impl, gate=z, fuse_gate=self.cpu_fast_paths,
        )  # fmt: skip
        return self.out_proj(y)

    def _fused_cpu_inference(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` runs the scan and the gate as one kernel."""
        return self.cpu_fast_paths and fuses_gate(x, self.A_log, self.scan_impl)


class PlainMambaLayer(nn.Module):
    """Pre-norm residual mixer; with ``with_dwconv`` the sum is replaced by GELU(BN(dwconv))."""

    def __init__(self, dim: int, drop_path: float = 0.0, with_dwconv: bool = False, **mixer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        if with_dwconv:
            self.dw = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
                nn.BatchNorm2d(dim),
                nn.GELU(),
            )
        else:
            self.dw = None
        self.mamba = PlainMambaMixer(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.mamba(self.norm(x), hw))
        if self.dw is not None:
            # As released: no residual around the depthwise block.
            batch, length, dim = x.shape
            x = x.reshape(batch, hw[0], hw[1], dim).permute(0, 3, 1, 2)
            x = self.dw(x.contiguous(memory_format=torch.channels_last))
            x = x.permute(0, 2, 3, 1).reshape(batch, length, dim)
        return x


class PlainMamba(Backbone):
    """Non-hierarchical Mamba trunk; outputs stride-16 maps of chosen layers.

    Args:
        img_size: pretraining image size; sets the position-embedding grid (224 -> 14x14).
        in_chans: input channels.
        patch_size: 16 for all released models.
        embed_dim: token width C.
        depth: number of layers.
        num_stem_convs: extra 3x3 convs in the patch embedding.
        dwconv_layers: layers followed by the released depthwise-conv block.
        d_state, expand, dt_rank, conv_size: mixer sizes (dt_rank ``None`` = ceil(C / 16)).
        drop_path_rate: maximum stochastic-depth rate, reached linearly at the last layer.
        out_indices: layers whose tokens become output maps ``layer{i}``; negative counts from
            the end. The last layer goes through ``ln1``; the others through ``norm_layer{i}``.
        final_norm: apply ``ln1`` after the last layer (classification and segmentation).
        scan_impl: selective-scan path (``auto``, ``ref``, ``numba``, ``mamba``, ``triton``,
            ``chunked``); ``None``: ``$PLAINMAMBA_SCAN`` if set, else ``auto`` (docs/ops.md).
        dwconv_impl: the mixers' depthwise conv + SiLU path (``auto``, ``ref``, ``triton``,
            ``numba``); ``None``: ``$PLAINMAMBA_DWCONV`` if set, else ``auto``.
        cpu_fast_paths: in CPU inference, fold the stem's BNs into its convs and run each mixer's
            scan, ``D * u`` and gate as one Numba kernel (same outputs within 1e-6); ``None``:
            on unless ``$PLAINMAMBA_CPU_FAST=0``.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 24,
        num_stem_convs: int = 1,
        dwconv_layers: Sequence[int] = (0,),
        d_state: int = 16,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        conv_size: int = 7,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (-1,),
        final_norm: bool = True,
        scan_impl: Optional[str] = None,
        dwconv_impl: Optional[str] = None,
        cpu_fast_paths: Optional[bool] = None,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.final_norm = final_norm
        self.drop_path_rate = drop_path_rate
        self.patch_embed = ConvPatchEmbed(
            in_chans, embed_dim, num_stem_convs, patch_size, cpu_fast_paths=cpu_fast_paths
        )
        side = img_size // patch_size
        self.pos_grid = (side, side)
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)

        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth > 1 else [0.0]
        dwconv_layers = {i % depth for i in dwconv_layers}
        self.layers = nn.ModuleList(
            PlainMambaLayer(
                embed_dim,
                drop_path=rates[i],
                with_dwconv=i in dwconv_layers,
                d_state=d_state,
                expand=expand,
                dt_rank=dt_rank,
                conv_size=conv_size,
                scan_impl=scan_impl,
                dwconv_impl=dwconv_impl,
                cpu_fast_paths=cpu_fast_paths,
            )
            for i in range(depth)
        )
        if final_norm:
            self.ln1 = nn.LayerNorm(embed_dim, eps=1e-6)

        self.out_indices = self._normalise_indices(out_indices)
        for i in self.out_indices:
            if i != depth - 1:
                self.add_module(f"norm_layer{i}", nn.LayerNorm(embed_dim, eps=1e-6))
        self._out_features = [f"layer{i}" for i in self.out_indices]
        self._out_feature_channels = {name: embed_dim for name in self._out_features}
        self._out_feature_strides = {name: patch_size for name in self._out_features}
        self.apply(self._init_weights)

    def _normalise_indices(self, indices: Iterable[int]) -> Tuple[int, ...]:
        out = []
        for i in indices:
            j = i + self.depth if i < 0 else i
            if not 0 <= j < self.depth:
                raise ValueError(
                    f"out_indices: layer {i} does not exist in a {self.depth}-layer trunk"
                )
            out.append(j)
        if sorted(set(out)) != out:
            raise ValueError(f"out_indices must be increasing and distinct, got {list(indices)}")
        return tuple(out)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            if getattr(m.bias, "_no_reinit", False):
                return
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.patch_size}

    def set_scan_impl(self, impl: Optional[str]) -> None:
        """Choose the selective-scan path of every layer (see :mod:`plainmamba.ops`)."""
        for layer in self.layers:
            layer.mamba.scan_impl = impl

    def set_dwconv_impl(self, impl: Optional[str]) -> None:
        """Choose the depthwise-conv path of every layer's mixer (see :mod:`plainmamba.ops`)."""
        for layer in self.layers:
            layer.mamba.dwconv_impl = impl

    def position_embedding(self, hw: Tuple[int, int]) -> torch.Tensor:
        """The position embedding for an ``hw`` token grid, bicubically resized when needed."""
        if tuple(hw) == self.pos_grid:
            return self.pos_embed
        grid = self.pos_embed.reshape(1, *self.pos_grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images (B, 3, H, W) -> tokens (B, L, C) with position embedding, and the grid (h, w)."""
        check_images(x, self.in_chans, self.patch_size)
        tokens, hw = self.patch_embed(x)
        return tokens + self.position_embedding(hw), hw

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Run the trunk: final tokens (after ``ln1`` if ``final_norm``) and the tapped maps."""
        tokens, hw = self.embed(x)
        maps: Dict[str, torch.Tensor] = {}
        last = self.depth - 1
        for i, layer in enumerate(self.layers):
            tokens = layer(tokens, hw)
            if i == last and self.final_norm:
                tokens = self.ln1(tokens)
            if i in self.out_indices:
                tap = tokens if i == last else getattr(self, f"norm_layer{i}")(tokens)
                maps[f"layer{i}"] = tap.transpose(1, 2).reshape(tap.shape[0], -1, *hw)
        return tokens, maps

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Images (B, 3, H, W), normalised -> ``{"layer{i}": (B, C, H/16, W/16)}``."""
        return self.forward_features(x)[1]

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self.embed_dim, stride=self.patch_size)
            for name in self._out_features
        }
