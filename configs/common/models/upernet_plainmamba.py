"""UperNet on the PlainMamba trunk, as released (docs/model.md#heads), built once.

The trunk's four stride-16 taps (``norm_layer{i}`` on the first three, ``ln1`` on the last) feed a
SyncBN ``UPerHead`` (512 channels, pool scales 1, 2, 3, 6, dropout 0.1, 150 classes); an
``FCNHead`` (one 3x3 conv of 256 channels, loss weight 0.4) on the fourth tap adds the auxiliary
loss. No neck: the released models have none. Leaf configs pick a size:

    from ..common.models.upernet_plainmamba import UPERNET_L2, model
    model.backbone.update(UPERNET_L2["backbone"])
    model.decode_head.update(UPERNET_L2["decode_head"])
    model.auxiliary_head.update(UPERNET_L2["auxiliary_head"])
"""

from detectron2.config import LazyCall as L

from plainmamba.modeling import (
    PIXEL_MEAN,
    PIXEL_STD,
    EncoderDecoderSegmentor,
    FCNHead,
    UPerHead,
)

from .plainmamba import L1, L2, L3
from .plainmamba import backbone as _trunk


def _upernet_size(arch, out_indices, drop_path_rate):
    taps = [f"layer{i}" for i in out_indices]
    return dict(
        backbone=dict(**arch, out_indices=list(out_indices), drop_path_rate=drop_path_rate),
        decode_head=dict(in_features=taps),
        auxiliary_head=dict(in_features=taps[-1:]),  # released in_index=3: the fourth tap
    )


# Released taps (out_indices) and drop path of the 160k recipes.
UPERNET_L1 = _upernet_size(L1, [5, 11, 17, 23], 0.1)
UPERNET_L2 = _upernet_size(L2, [5, 11, 17, 23], 0.2)
UPERNET_L3 = _upernet_size(L3, [8, 17, 26, 35], 0.3)

backbone = _trunk.copy()
backbone.final_norm = True  # the last tap goes through ln1, as released

model = L(EncoderDecoderSegmentor)(
    backbone=backbone,
    decode_head=L(UPerHead)(
        in_features=[],  # set with the size below
        in_channels="${..backbone.embed_dim}",
        channels=512,
        pool_scales=[1, 2, 3, 6],
        num_classes=150,
        dropout=0.1,
        norm="SyncBN",
        loss_weight=1.0,
        ignore_value=255,
    ),
    auxiliary_head=L(FCNHead)(
        in_features=[],
        in_channels="${..backbone.embed_dim}",
        channels=256,
        num_convs=1,
        concat_input=False,
        num_classes="${..decode_head.num_classes}",
        dropout=0.1,
        norm="${..decode_head.norm}",
        loss_weight=0.4,
        ignore_value="${..decode_head.ignore_value}",
    ),
    pixel_mean=list(PIXEL_MEAN),
    pixel_std=list(PIXEL_STD),
    size_divisibility=32,  # whole-image inference pads to a multiple of 32, then crops back
    backbone_norm="${.decode_head.norm}",  # the trunk's BNs synchronised too, as released
)
model.backbone.update(UPERNET_L1["backbone"])
model.decode_head.update(UPERNET_L1["decode_head"])
model.auxiliary_head.update(UPERNET_L1["auxiliary_head"])
