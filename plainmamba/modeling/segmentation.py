"""UperNet semantic segmentation on the PlainMamba trunk, for Detectron2 (docs/model.md#heads).

The heads keep MMSegmentation 0.x module names (``UPerHead``: ``psp_modules``, ``bottleneck``,
``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``; ``FCNHead``: ``convs``,
``conv_seg``; every conv-norm-ReLU block named like MMCV's ``ConvModule``: ``conv``, ``bn``), and
:class:`EncoderDecoderSegmentor` keeps the released attribute names ``backbone``,
``decode_head`` and ``auxiliary_head``. A released MMSegmentation state dict therefore loads
without renaming (see :mod:`plainmamba.checkpoint.convert_mmseg`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import get_norm
from detectron2.modeling import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from .classifier import PIXEL_MEAN, PIXEL_STD
from .inputs import check_image_inputs

__all__ = [
    "ConvModule",
    "PPM",
    "UPerHead",
    "FCNHead",
    "EncoderDecoderSegmentor",
]

# The released heads were trained with align_corners=False (both heads of every released config);
# bilinear resizes here must agree or the pretrained heads see shifted maps.
ALIGN_CORNERS = False
_NORMS = ("SyncBN", "BN", "naiveSyncBN", "nnSyncBN", "naiveSyncBN_N", "FrozenBN", "GN", "LN", "")


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=ALIGN_CORNERS)


class ConvModule(nn.Module):
    """Conv2d, optional norm and ReLU, with MMCV ``ConvModule``'s names and initialisation.

    The conv is ``conv`` (no bias when a norm follows, as in MMCV) and the norm ``bn`` whatever
    its type, so released ``<name>.conv.weight`` / ``<name>.bn.*`` keys load as they are.

    Args:
        in_channels, out_channels, kernel_size, padding: of the convolution.
        norm: a Detectron2 ``get_norm`` name ("SyncBN" as released, "BN", "naiveSyncBN", ...);
            "" for none (the conv then has a bias).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        norm: str = "SyncBN",
    ):
        super().__init__()
        norm = norm or ""
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, bias=not norm
        )
        try:
            bn = get_norm(norm, out_channels)
        except KeyError:
            raise ValueError(f"unknown norm {norm!r}; expected one of {_NORMS}") from None
        self.bn = bn
        self.activate = nn.ReLU(inplace=True)
        # MMCV's ConvModule.init_weights: Kaiming normal (fan_out, ReLU) convs, unit norms.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        if bn is not None and getattr(bn, "weight", None) is not None:
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.activate(x)


class PPM(nn.ModuleList):
    """Pooling pyramid: per scale, adaptive average pool -> 1x1 ``ConvModule`` -> upsample.

    Each scale is ``Sequential(pool, ConvModule)``, hence the released ``psp_modules.{i}.1.*``.
    """

    def __init__(
        self, pool_scales: Sequence[int], in_channels: int, channels: int, norm: str = "SyncBN"
    ):
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1, norm=norm))
            for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:  # type: ignore[override]
        if torch.jit.is_tracing():
            # ONNX has no adaptive pooling (the exporter takes only sizes that divide the input,
            # and 3 or 6 do not divide a 32 x 32 map): the same averages as matrix products.
            pooled = [_adaptive_avg_pool_matmul(x, branch[0].output_size) for branch in self]
            return [_resize(branch[1](p), x.shape[-2:]) for branch, p in zip(self, pooled)]
        return [_resize(branch(x), x.shape[-2:]) for branch in self]


def _pool_matrix(size: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """(out, size) averaging weights of adaptive average pooling along one axis."""
    weights = torch.zeros(out, size, dtype=like.dtype, device=like.device)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def _adaptive_avg_pool_matmul(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` as two matrix products (for static input sizes)."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = int(x.shape[-2]), int(x.shape[-1])
    rows = _pool_matrix(height, int(out_h or height), x)
    cols = _pool_matrix(width, int(out_w or width), x)
    return torch.matmul(torch.matmul(rows, x), cols.t())


class _DecodeHead(nn.Module):
    """What MMSegmentation's ``BaseDecodeHead`` adds to every head: dropout, ``conv_seg``, loss.

    Subclasses build their layers and implement :meth:`layers`.
    """

    def __init__(
        self,
        in_features: Union[str, Sequence[str]],
        in_channels: Union[int, Sequence[int]],
        channels: int,
        num_classes: int,
        dropout: float,
        loss_weight: float,
        ignore_value: int,
        loss_name: str,
        avg_non_ignore: bool,
    ):
        super().__init__()
        self.in_features = [in_features] if isinstance(in_features, str) else list(in_features)
        if not self.in_features:
            raise ValueError(f"{type(self).__name__}: in_features is empty")
        if isinstance(in_channels, int):
            in_channels = [in_channels] * len(self.in_features)
        self.in_channels = [int(c) for c in in_channels]
        if len(self.in_channels) != len(self.in_features):
            raise ValueError(
                f"{type(self).__name__}: {len(self.in_features)} in_features "
                f"{self.in_features} but {len(self.in_channels)} in_channels {self.in_channels}"
            )
        if not loss_name.startswith("loss_"):
            # Detectron2's trainers sum every entry of the loss dict; say what it is.
            raise ValueError(f"loss_name must start with 'loss_', got {loss_name!r}")
        self.channels = channels
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value
        self.loss_name = loss_name
        self.avg_non_ignore = avg_non_ignore
        # MMSegmentation drops whole channels (Dropout2d), not single activations.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _inputs(self, features: Mapping[str, torch.Tensor]) -> List[torch.Tensor]:
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: features {missing} not among the inputs {list(features)}"
            )
        return [features[f] for f in self.in_features]

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout then the 1x1 classifier."""
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)

    def layers(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_classes, h, w) at the stride of the first input feature."""
        raise NotImplementedError

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Weighted cross-entropy of ``logits`` against ``targets`` (B, H, W, long).

        As in MMSegmentation, the logits are first resized bilinearly to the targets' size, in
        float32. Pixels labelled ``ignore_value`` contribute nothing; the mean is over all pixels
        (MMSegmentation 0.x, ``avg_non_ignore=False``, as released) or over the labelled ones.
        """
        if targets.dim() != 3:
            raise ValueError(f"targets must be (B, H, W), got {tuple(targets.shape)}")
        if targets.device.type == "cpu":
            # Out-of-range labels would fail deep inside cross_entropy; on a GPU the check would
            # cost a host sync per step, so it runs on CPU tensors only.
            bad = targets[
                (targets != self.ignore_value) & ((targets < 0) | (targets >= self.num_classes))
            ]
            if bad.numel():
                raise ValueError(
                    f"label {int(bad[0])} is neither in [0, {self.num_classes}) nor the ignore "
                    f"value {self.ignore_value}"
                )
        logits = _resize(logits.float(), targets.shape[-2:])
        loss = F.cross_entropy(logits, targets, reduction="none", ignore_index=self.ignore_value)
        if self.avg_non_ignore:
            loss = loss.sum() / (targets != self.ignore_value).sum().clamp(min=1)
        else:
            loss = loss.mean()
        return {self.loss_name: self.loss_weight * loss}

    def forward(
        self, features: Mapping[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(logits at the first input's stride, losses)``; losses only when targets are given."""
        logits = self.layers(features)
        return logits, ({} if targets is None else self.losses(logits, targets))


class UPerHead(_DecodeHead):
    """UperNet decoder (MMSegmentation ``UPerHead``) on maps that may all share one stride.

    A pooling pyramid on the last input, concatenated with it, goes through the 3x3
    ``bottleneck``; the other inputs go through 1x1 ``lateral_convs``; a top-down pass adds each
    upsampled level to the one before; 3x3 ``fpn_convs`` smooth all but the top; everything is
    resized to the first input's size, concatenated and fused by the 3x3 ``fpn_bottleneck``;
    then dropout and the 1x1 ``conv_seg``.

    Args:
        in_features: names of the input maps, first to last (the last gets the pyramid).
        in_channels: channels of each input (one int for all).
        channels: width of the decoder (512 as released).
        pool_scales: output sizes of the pyramid's adaptive pools.
        num_classes: classifier outputs (150 for ADE20K).
        dropout: channel dropout before ``conv_seg``.
        norm: ``get_norm`` name of every conv block ("SyncBN" as released).
        loss_weight: factor on the cross-entropy.
        ignore_value: label that contributes no loss (and pads the targets).
        loss_name: key of the loss in the returned dict.
        avg_non_ignore: average the loss over labelled pixels instead of all pixels.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: Union[int, Sequence[int]],
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        num_classes: int = 150,
        dropout: float = 0.1,
        norm: str = "SyncBN",
        loss_weight: float = 1.0,
        ignore_value: int = 255,
        loss_name: str = "loss_sem_seg",
        avg_non_ignore: bool = False,
    ):
        super().__init__(
            in_features,
            in_channels,
            channels,
            num_classes,
            dropout,
            loss_weight,
            ignore_value,
            loss_name,
            avg_non_ignore,
        )
        top = self.in_channels[-1]
        self.psp_modules = PPM(pool_scales, top, channels, norm)
        self.bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3, 1, norm)
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, channels, 1, norm=norm) for c in self.in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, 1, norm) for _ in self.in_channels[:-1]
        )
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, 1, norm)

    def layers(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = self._inputs(features)
        top = inputs[-1]
        # The released weights expect this channel order: the input, then the pooled scales.
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([_resize(x, size) for x in outs], dim=1))
        return self.cls_seg(fused)


class FCNHead(_DecodeHead):
    """The auxiliary FCN head (MMSegmentation ``FCNHead``) on one input map.

    ``num_convs`` 3x3 conv blocks (``convs.{i}``), optionally the input concatenated back and
    fused by ``conv_cat``, then dropout and ``conv_seg``.

    Args:
        in_features: the input map (a name, or a list of one name).
        in_channels: its channels.
        channels: width of the conv blocks (256 as released).
        num_convs, kernel_size, concat_input: as in MMSegmentation (released: 1, 3, False).
        num_classes, dropout, norm, ignore_value, loss_name, avg_non_ignore: as in
            :class:`UPerHead`.
        loss_weight: factor on the cross-entropy (0.4 as released).
    """

    def __init__(
        self,
        *,
        in_features: Union[str, Sequence[str]],
        in_channels: Union[int, Sequence[int]],
        channels: int = 256,
        num_convs: int = 1,
        kernel_size: int = 3,
        concat_input: bool = False,
        num_classes: int = 150,
        dropout: float = 0.1,
        norm: str = "SyncBN",
        loss_weight: float = 0.4,
        ignore_value: int = 255,
        loss_name: str = "loss_aux",
        avg_non_ignore: bool = False,
    ):
        super().__init__(
            in_features,
            in_channels,
            channels,
            num_classes,
            dropout,
            loss_weight,
            ignore_value,
            loss_name,
            avg_non_ignore,
        )
        if len(self.in_features) != 1:
            raise ValueError(f"FCNHead takes one input feature, got {self.in_features}")
        cin = self.in_channels[0]
        if num_convs < 0:
            raise ValueError(f"FCNHead: num_convs must be >= 0, got {num_convs}")
        if num_convs == 0 and cin != channels:
            raise ValueError(
                f"FCNHead: without convs in_channels must equal channels ({cin}, {channels})"
            )
        pad = kernel_size // 2
        blocks = [
            ConvModule(cin if i == 0 else channels, channels, kernel_size, pad, norm)
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*blocks) if blocks else nn.Identity()
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvModule(cin + channels, channels, kernel_size, pad, norm)

    def layers(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        (x,) = self._inputs(features)
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


def _pad_to(x: torch.Tensor, size: Sequence[int], value: float) -> torch.Tensor:
    """``x`` padded on the bottom and right to ``size`` (H, W) with ``value``."""
    pad_h, pad_w = int(size[0]) - x.shape[-2], int(size[1]) - x.shape[-1]
    if pad_h <= 0 and pad_w <= 0:
        return x
    return F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=value)


def _replace_batch_norms(module: nn.Module, norm: str) -> None:
    """Swap every plain ``nn.BatchNorm2d`` under ``module`` for ``get_norm(norm)``, state kept."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            try:
                new = get_norm(norm, child.num_features)
            except KeyError:
                raise ValueError(f"unknown norm {norm!r}; expected one of {_NORMS}") from None
            new.eps, new.momentum = child.eps, child.momentum
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            _replace_batch_norms(child, norm)


class EncoderDecoderSegmentor(nn.Module):
    """Semantic segmentation meta-architecture: backbone, decode head, optional auxiliary head.

    Inputs are Detectron2 semantic-segmentation dicts: ``image`` (3, H, W) RGB in 0-255 (uint8
    or float), in training ``sem_seg`` (H, W) long with ``ignore_value`` for unlabelled pixels,
    and optionally ``height`` / ``width``, the size to predict at. Images are normalised, then
    padded with zeros (the mean colour) to a common size divisible by ``size_divisibility``;
    targets are padded with the decode head's ``ignore_value``.

    Training returns the heads' losses (``loss_sem_seg``, ``loss_aux``, each already weighted).
    Inference runs on the whole padded image and returns ``[{"sem_seg": (K, height, width)}]``
    logits: upsampled bilinearly to the padded size, cropped to the image and resized to
    ``height`` x ``width`` (Detectron2's ``sem_seg_postprocess``), what ``SemSegEvaluator``
    reads. Images of different sizes in one batch are padded to the largest.

    Args:
        backbone: a Detectron2 backbone (here ``PlainMamba`` with four ``out_indices``).
        decode_head: e.g. :class:`UPerHead`; its ``in_features`` name backbone outputs.
        auxiliary_head: e.g. :class:`FCNHead`, used for its loss only; ``None`` for none.
        pixel_mean, pixel_std: RGB normalisation in 0-255 units.
        size_divisibility: pad height and width up to a multiple of this (0: no padding beyond
            the largest image of the batch).
        backbone_norm: a ``get_norm`` name that replaces every plain ``BatchNorm2d`` of the
            backbone (its stem, L1's first layer), keeping its state; ``None`` keeps them. The
            released recipe synchronises them across GPUs (``convert_syncbn=True``): "SyncBN".
        train_pad_size: ``(height, width)`` every training batch is padded to at least (images
            with zeros after normalisation, targets with ``ignore_value``), as the released
            pipeline's ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)`` pads each crop;
            ``None`` pads to the largest image of the batch only. Inference is not affected.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        decode_head: _DecodeHead,
        auxiliary_head: Optional[_DecodeHead] = None,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        size_divisibility: int = 32,
        backbone_norm: Optional[str] = None,
        train_pad_size: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if train_pad_size is not None:
            train_pad_size = tuple(int(v) for v in train_pad_size)
            if len(train_pad_size) != 2 or min(train_pad_size) <= 0:
                raise ValueError(f"train_pad_size must be (height, width), got {train_pad_size}")
        self.train_pad_size = train_pad_size
        if backbone_norm:
            _replace_batch_norms(backbone, backbone_norm)
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.size_divisibility = int(size_divisibility)
        self.ignore_value = decode_head.ignore_value
        if auxiliary_head is not None and auxiliary_head.ignore_value != self.ignore_value:
            raise ValueError(
                f"the heads disagree on the ignore value: {self.ignore_value} (decode) vs "
                f"{auxiliary_head.ignore_value} (auxiliary)"
            )
        shapes = backbone.output_shape()
        for name, head in (("decode_head", decode_head), ("auxiliary_head", auxiliary_head)):
            if head is None:
                continue
            for feature, channels in zip(head.in_features, head.in_channels):
                if feature not in shapes:
                    raise ValueError(
                        f"{name}: input {feature!r} is not a backbone output {list(shapes)}"
                    )
                if shapes[feature].channels != channels:
                    raise ValueError(
                        f"{name}: input {feature!r} has {shapes[feature].channels} channels, "
                        f"the head expects {channels}"
                    )
        # Not persistent: checkpoints hold only learned state, as the released ones do.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _images(self, batched_inputs: List[Dict[str, Any]]) -> List[torch.Tensor]:
        return check_image_inputs(batched_inputs, len(self.pixel_mean), type(self).__name__)

    def preprocess_image(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """Validate, normalise and pad the images of a batch."""
        images = [
            (im.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
            for im in self._images(batched_inputs)
        ]
        batch = ImageList.from_tensors(images, self.size_divisibility)
        if self.training and self.train_pad_size is not None:
            size = [max(a, b) for a, b in zip(batch.tensor.shape[-2:], self.train_pad_size)]
            batch = ImageList(_pad_to(batch.tensor, size, 0.0), batch.image_sizes)
        return batch

    def preprocess_targets(
        self, batched_inputs: List[Dict[str, Any]], images: ImageList
    ) -> torch.Tensor:
        """The ``sem_seg`` maps padded like ``images``, with the ignore value."""
        targets = []
        for i, (record, size) in enumerate(zip(batched_inputs, images.image_sizes)):
            target = record.get("sem_seg")
            if not torch.is_tensor(target):
                raise ValueError(f"training input {i} has no 'sem_seg' tensor")
            if tuple(target.shape) != tuple(size):
                raise ValueError(
                    f"training input {i}: sem_seg {tuple(target.shape)} does not match the "
                    f"image {tuple(size)}"
                )
            targets.append(target.to(self.device, torch.long, non_blocking=True))
        padded = ImageList.from_tensors(targets, self.size_divisibility, self.ignore_value).tensor
        return _pad_to(padded, images.tensor.shape[-2:], self.ignore_value)

    def forward(
        self, batched_inputs: List[Dict[str, Any]]
    ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            targets = self.preprocess_targets(batched_inputs, images)
            _, losses = self.decode_head(features, targets)
            if self.auxiliary_head is not None:
                aux = self.auxiliary_head(features, targets)[1]
                clash = set(aux) & set(losses)
                if clash:
                    raise ValueError(f"both heads report the loss {sorted(clash)}")
                losses.update(aux)
            return losses
        return self.inference(features, images, batched_inputs)

    def inference(
        self,
        features: Mapping[str, torch.Tensor],
        images: ImageList,
        batched_inputs: List[Dict[str, Any]],
    ) -> List[Dict[str, torch.Tensor]]:
        """Decode-head logits per image at the requested output size."""
        logits = self.decode_head.layers(features)
        padded = images.tensor.shape[-2:]
        results = []
        for logit, record, size in zip(logits, batched_inputs, images.image_sizes):
            # One image at a time: the full-size logits of a batch can be large (K x H x W each).
            full = _resize(logit[None], padded)[0]
            height = int(record.get("height", size[0]))
            width = int(record.get("width", size[1]))
            results.append({"sem_seg": sem_seg_postprocess(full, size, height, width)})
        return results
