"""PlainMamba-Adapter: a ViT-Adapter-style pyramid around the PlainMamba trunk.

What it computes: docs/model.md#plainmamba-adapter.

The adapter owns a :class:`~plainmamba.modeling.PlainMamba` trunk (``self.trunk``) and runs the
trunk's layers in groups, exchanging information with a convolutional spatial prior through
multi-scale deformable attention. Module names below ``trunk`` and of the adapter parts (``spm``,
``level_embed``, ``interactions``, ``up``, ``ad_norm1..4``) are those of the released detection
backbone, so a released checkpoint converts by a prefix rename.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import Backbone
from timm.layers import DropPath, trunc_normal_

from ..ops.ms_deform_attn import ms_deform_attn
from .plainmamba import PlainMamba, check_images
from .segmentation import _replace_batch_norms

__all__ = [
    "MSDeformAttn",
    "SpatialPriorModule",
    "Injector",
    "Extractor",
    "ConvFFN",
    "InteractionBlock",
    "PlainMambaAdapter",
    "reference_points",
]

Shapes = Tuple[Tuple[int, int], ...]


@lru_cache(maxsize=64)
def _reference_points_cpu(shapes: Shapes) -> torch.Tensor:
    with torch.inference_mode(False):
        return _build_reference_points(shapes)


def _build_reference_points(shapes: Shapes) -> torch.Tensor:
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        ys, xs = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)[None, :, None]  # (1, L, 1, 2), (x, y)


_REF_CACHE: Dict[Tuple[Shapes, torch.device], torch.Tensor] = {}


def reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Token-centre reference points ((j + 0.5) / W, (i + 0.5) / H) of the levels, (1, L, 1, 2).

    Cached per (shapes, device) so that no forward rebuilds them or copies them to the device.
    """
    key = (tuple((int(h), int(w)) for h, w in shapes), torch.device(device))
    ref = _REF_CACHE.get(key)
    if ref is None:
        if len(_REF_CACHE) > 64:
            _REF_CACHE.clear()
        # A cached tensor made under inference_mode could not be saved for a later backward.
        with torch.inference_mode(False):
            ref = _reference_points_cpu(key[0]).to(device)
        _REF_CACHE[key] = ref
    return ref


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), released name ``attn``.

    Args:
        d_model: query and output width.
        n_levels: number of value levels.
        n_heads: attention heads (``d_model * ratio`` must divide by it).
        n_points: sampling points per head and level.
        ratio: value width ``int(d_model * ratio)``.
        impl: sampling path (see :mod:`plainmamba.ops.ms_deform_attn`); ``None`` = default.
    """

    def __init__(
        self,
        d_model: int,
        n_levels: int,
        n_heads: int,
        n_points: int,
        ratio: float = 1.0,
        impl: Optional[str] = None,
    ):
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim % n_heads != 0:
            raise ValueError(
                f"MSDeformAttn: value width {value_dim} does not divide by {n_heads} heads"
            )
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.impl = impl
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR initialisation: offsets start on a ring of growing radius per head."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        ref_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: Sequence[Tuple[int, int]],
    ) -> torch.Tensor:
        """``query`` (B, Lq, C) attends to ``value`` (B, S, C) laid out as ``spatial_shapes``."""
        batch, queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"MSDeformAttn: built for {levels} levels, got {len(spatial_shapes)}")
        value = self.value_proj(value).view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
        # Offsets are in units of each level's cells: divide by its (W, H).
        normaliser = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device
        )
        locations = (
            ref_points[:, :, None, :, None, :].float()
            + offsets.float() / normaliser[None, None, None, :, None, :]
        )
        out = ms_deform_attn(value, spatial_shapes, locations, weights, impl=self.impl)
        return self.output_proj(out)


class SpatialPriorModule(nn.Module):
    """Convolutional stem giving c1..c4 at strides 4, 8, 16, 32 (released name ``spm``)."""

    def __init__(self, inplanes: int = 64, embed_dim: int = 192, norm: str = "SyncBN"):
        super().__init__()
        if not norm:
            raise ValueError("SpatialPriorModule needs a norm (the released weights hold BN stats)")

        def conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                get_norm(norm, cout),
                nn.ReLU(inplace=True),
            ]

        self.stem = nn.Sequential(
            *conv_bn_relu(3, inplanes, 2),
            *conv_bn_relu(inplanes, inplanes, 1),
            *conv_bn_relu(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: torch.Tensor, with_c1: bool = True) -> List[Optional[torch.Tensor]]:
        """Maps c1 (or ``None`` when not needed), c2, c3, c4, each with ``embed_dim`` channels."""
        s4 = self.stem(x)
        s8 = self.conv2(s4)
        s16 = self.conv3(s8)
        s32 = self.conv4(s16)
        c1 = self.fc1(s4) if with_c1 else None
        return [c1, self.fc2(s8), self.fc3(s16), self.fc4(s32)]


class _DWConv(nn.Module):
    """Depthwise 3x3 conv applied to each level of a concatenated token sequence separately."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        batch, _, dim = x.shape
        outs = []
        for part, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
            part = part.transpose(1, 2).reshape(batch, dim, h, w)
            outs.append(self.dwconv(part).flatten(2).transpose(1, 2))
        return torch.cat(outs, dim=1)


class ConvFFN(nn.Module):
    """fc1 -> per-level depthwise conv -> GELU -> fc2 (released name ``ffn``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Injector(nn.Module):
    """x = x + gamma * MSDeformAttn(LN(x), LN(c)) over the three prior levels."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        n_levels: int = 3,
        deform_ratio: float = 1.0,
        init_values: float = 0.0,
        msda_impl: Optional[str] = None,
    ):
        super().__init__()
        self.query_norm = _layer_norm(dim)
        self.feat_norm = _layer_norm(dim)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, deform_ratio, impl=msda_impl)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(
        self, x: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor, shapes: Shapes
    ) -> torch.Tensor:
        attn = self.attn(self.query_norm(x), ref, self.feat_norm(feat), shapes)
        return x + self.gamma * attn


class Extractor(nn.Module):
    """c = c + MSDeformAttn(LN(c), LN(x)); c = c + DropPath(ConvFFN(LN(c)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        deform_ratio: float = 1.0,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        drop_path: float = 0.0,
        msda_impl: Optional[str] = None,
    ):
        super().__init__()
        self.query_norm = _layer_norm(dim)
        self.feat_norm = _layer_norm(dim)
        self.attn = MSDeformAttn(dim, 1, num_heads, n_points, deform_ratio, impl=msda_impl)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
            self.ffn_norm = _layer_norm(dim)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        c: torch.Tensor,
        ref: torch.Tensor,
        x: torch.Tensor,
        x_shape: Tuple[int, int],
        c_shapes: Shapes,
    ) -> torch.Tensor:
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), (x_shape,))
        if self.with_cffn:
            c = c + self.drop_path(self.ffn(self.ffn_norm(c), c_shapes))
        return c


class InteractionBlock(nn.Module):
    """Injector, a group of trunk layers, extractor (and two extra extractors on the last block).

    The trunk layers are not owned here: :class:`PlainMambaAdapter` passes them in, so the trunk
    stays one module with its released names.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        init_values: float = 0.0,
        drop_path: float = 0.0,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        deform_ratio: float = 1.0,
        extra_extractor: bool = False,
        msda_impl: Optional[str] = None,
    ):
        super().__init__()
        self.injector = Injector(
            dim,
            num_heads,
            n_points,
            3,
            deform_ratio=deform_ratio,
            init_values=init_values,
            msda_impl=msda_impl,
        )
        extractor_args = dict(
            num_heads=num_heads,
            n_points=n_points,
            deform_ratio=deform_ratio,
            with_cffn=with_cffn,
            cffn_ratio=cffn_ratio,
            drop_path=drop_path,
            msda_impl=msda_impl,
        )
        self.extractor = Extractor(dim, **extractor_args)
        self.extra_extractors = (
            nn.Sequential(*[Extractor(dim, **extractor_args) for _ in range(2)])
            if extra_extractor
            else None
        )

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        layers: Sequence[nn.Module],
        hw: Tuple[int, int],
        c_shapes: Shapes,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.injector(x, reference_points([hw], x.device), c, c_shapes)
        for layer in layers:
            x = layer(x, hw)
        ref = reference_points(c_shapes, x.device)
        c = self.extractor(c, ref, x, hw, c_shapes)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                c = extractor(c, ref, x, hw, c_shapes)
        return x, c


class PlainMambaAdapter(Backbone):
    """PlainMamba trunk + ViT-Adapter: a Detectron2 backbone with strides 4, 8, 16, 32.

    Args:
        trunk: a :class:`PlainMamba` built with ``final_norm=False``; the adapter runs its layers.
        interaction_indexes: inclusive [first, last] layer ranges, one per interaction, covering
            the trunk's layers in order (L1/L2: [[0, 5], [6, 11], [12, 17], [18, 23]]).
        conv_inplane: width of the spatial prior module (64 in the released models).
        n_points, deform_num_heads, deform_ratio: deformable-attention sizes.
        init_values: initial injector gamma (0: the adapter starts as the plain trunk).
        with_cffn, cffn_ratio: the extractors' conv FFN and its hidden ratio.
        add_vit_feature: add the resized trunk tokens to every output level.
        use_extra_extractor: two more extractors after the last interaction.
        norm: Detectron2 norm name (``get_norm``) of the spatial prior and output norms;
            "SyncBN" as released (it also runs in one process), "BN", or "naiveSyncBN" for
            multi-process CPU (gloo) training.
        drop_path_rate: the extractors' stochastic depth; ``None`` = the trunk's maximum rate.
        out_features: subset of ``res2``..``res5`` (strides 4..32) to return.
        trunk_norm: a ``get_norm`` name that replaces the trunk's plain ``BatchNorm2d`` layers
            (its stem, L1's layer-0 dwconv), state kept; ``None`` keeps them. The released
            training converted the whole detector with ``convert_sync_batchnorm``
            (``convert_syncbn=True``), so the COCO configs pass the adapter's ``norm``.
        msda_impl: deformable-attention path of every interaction (``auto``, ``ref``); ``None``:
            ``$PLAINMAMBA_MSDA`` if set, else ``auto`` (docs/ops.md).
        scan_impl, dwconv_impl: when given, replace the trunk's selective-scan and
            depthwise-conv paths (:meth:`PlainMamba.set_scan_impl`, ``set_dwconv_impl``);
            ``None`` keeps what the trunk was built with.
    """

    _LEVELS = ("res2", "res3", "res4", "res5")

    def __init__(
        self,
        trunk: PlainMamba,
        interaction_indexes: Sequence[Sequence[int]],
        *,
        conv_inplane: int = 64,
        n_points: int = 4,
        deform_num_heads: int = 6,
        init_values: float = 0.0,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        deform_ratio: float = 1.0,
        add_vit_feature: bool = True,
        use_extra_extractor: bool = True,
        norm: str = "SyncBN",
        drop_path_rate: Optional[float] = None,
        out_features: Sequence[str] = _LEVELS,
        trunk_norm: Optional[str] = None,
        msda_impl: Optional[str] = None,
        scan_impl: Optional[str] = None,
        dwconv_impl: Optional[str] = None,
    ):
        super().__init__()
        if not isinstance(trunk, PlainMamba):
            raise TypeError(f"PlainMambaAdapter: trunk must be a PlainMamba, got {type(trunk)}")
        if scan_impl is not None:
            trunk.set_scan_impl(scan_impl)
        if dwconv_impl is not None:
            trunk.set_dwconv_impl(dwconv_impl)
        if trunk_norm:
            _replace_batch_norms(trunk, trunk_norm)
        if trunk.final_norm:
            raise ValueError(
                "PlainMambaAdapter: build the trunk with final_norm=False (the adapter reads its "
                "raw tokens; released detection backbones have no ln1)"
            )
        self.trunk = trunk
        self.interaction_indexes = self._check_indexes(interaction_indexes, trunk.depth)
        self.add_vit_feature = add_vit_feature
        dim = trunk.embed_dim
        if drop_path_rate is None:
            drop_path_rate = trunk.drop_path_rate

        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm)
        last = len(self.interaction_indexes) - 1
        self.interactions = nn.Sequential(
            *[
                InteractionBlock(
                    dim,
                    deform_num_heads,
                    n_points,
                    init_values=init_values,
                    drop_path=drop_path_rate,
                    with_cffn=with_cffn,
                    cffn_ratio=cffn_ratio,
                    deform_ratio=deform_ratio,
                    extra_extractor=use_extra_extractor and i == last,
                    msda_impl=msda_impl,
                )
                for i in range(len(self.interaction_indexes))
            ]
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        for i in range(1, 5):
            self.add_module(f"ad_norm{i}", get_norm(norm, dim))

        unknown = [f for f in out_features if f not in self._LEVELS]
        if unknown or not out_features:
            raise ValueError(
                f"PlainMambaAdapter: out_features {list(out_features)} must be a non-empty subset "
                f"of {list(self._LEVELS)}"
            )
        self._out_features = [f for f in self._LEVELS if f in out_features]
        self._out_feature_channels = {f: dim for f in self._out_features}
        self._out_feature_strides = {f: 2 ** (i + 2) for i, f in enumerate(self._LEVELS)}
        self._out_feature_strides = {f: self._out_feature_strides[f] for f in self._out_features}
        self._init_adapter_weights()

    def set_msda_impl(self, impl: Optional[str]) -> None:
        """Choose the deformable-attention path of every interaction (see :mod:`plainmamba.ops`)."""
        for module in self.interactions.modules():
            if isinstance(module, MSDeformAttn):
                module.impl = impl

    @staticmethod
    def _check_indexes(indexes: Sequence[Sequence[int]], depth: int) -> List[Tuple[int, int]]:
        ranges = [(int(r[0]), int(r[-1])) for r in indexes]
        expected = 0
        for first, last in ranges:
            if first != expected or last < first:
                raise ValueError(
                    f"interaction_indexes {list(map(list, ranges))} must be consecutive inclusive "
                    f"ranges starting at layer 0"
                )
            expected = last + 1
        if expected != depth:
            raise ValueError(
                f"interaction_indexes {list(map(list, ranges))} cover {expected} layers, the trunk "
                f"has {depth}"
            )
        return ranges

    def _init_adapter_weights(self) -> None:
        for module in [self.up, self.spm, self.interactions]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @property
    def size_divisibility(self) -> int:
        return 32

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": 32}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Images (B, 3, H, W), normalised, sides divisible by 32 -> ``res2``..``res5`` maps."""
        check_images(x, self.trunk.in_chans, 32)
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"PlainMambaAdapter: image sides must divide by 32, got {tuple(x.shape[-2:])}; "
                "Detectron2 pads to backbone.size_divisibility when models batch their inputs"
            )
        want_c1 = "res2" in self._out_features
        c1, c2, c3, c4 = self.spm(x, with_c1=want_c1)
        c_shapes: Shapes = tuple(tuple(t.shape[-2:]) for t in (c2, c3, c4))  # type: ignore
        c = torch.cat(
            [
                t.flatten(2).transpose(1, 2) + self.level_embed[i]
                for i, t in enumerate((c2, c3, c4))
            ],
            dim=1,
        )
        tokens, hw = self.trunk.embed(x)
        for block, (first, last) in zip(self.interactions, self.interaction_indexes):
            tokens, c = block(tokens, c, self.trunk.layers[first : last + 1], hw, c_shapes)

        batch, _, dim = tokens.shape
        maps = [
            part.transpose(1, 2).reshape(batch, dim, h, w)
            for part, (h, w) in zip(c.split([h * w for h, w in c_shapes], dim=1), c_shapes)
        ]
        levels: Dict[str, torch.Tensor] = dict(zip(self._LEVELS[1:], maps))
        if want_c1:
            levels["res2"] = self.up(levels["res3"]) + c1
        if self.add_vit_feature:
            x3 = tokens.transpose(1, 2).reshape(batch, dim, *hw)
            for name, scale in (("res2", 4.0), ("res3", 2.0), ("res4", 1.0), ("res5", 0.5)):
                if name not in levels:
                    continue
                if scale == 1.0:
                    levels[name] = levels[name] + x3
                else:
                    levels[name] = levels[name] + F.interpolate(
                        x3, scale_factor=scale, mode="bilinear", align_corners=False
                    )
        return {
            name: getattr(self, f"ad_norm{self._LEVELS.index(name) + 1}")(levels[name])
            for name in self._out_features
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
