"""The PlainMamba-Adapter backbone (docs/model.md#plainmamba-adapter); leaf configs pick a size.

from ..common.models.plainmamba_adapter import ADAPTER_L2
model.backbone.bottom_up.update(ADAPTER_L2["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L2["trunk"])
"""

from detectron2.config import LazyCall as L

from plainmamba.modeling import PlainMambaAdapter

from .plainmamba import L1, L2, L3, backbone

trunk = backbone.copy()
trunk.final_norm = False  # released detection backbones have no ln1
trunk.out_indices = [-1]

_QUARTERS = [[0, 5], [6, 11], [12, 17], [18, 23]]

# Sizes of the released detectors: trunk size, adapter heads and interaction ranges,
# drop path of the 1x recipes.
ADAPTER_L1 = dict(
    trunk=dict(**L1, drop_path_rate=0.1),
    adapter=dict(deform_num_heads=6, interaction_indexes=_QUARTERS),
)
ADAPTER_L2 = dict(
    trunk=dict(**L2, drop_path_rate=0.2),
    adapter=dict(deform_num_heads=6, interaction_indexes=_QUARTERS),
)
ADAPTER_L3 = dict(
    trunk=dict(**L3, drop_path_rate=0.3),
    adapter=dict(deform_num_heads=8, interaction_indexes=[[0, 8], [9, 17], [18, 26], [27, 35]]),
)

adapter = L(PlainMambaAdapter)(
    trunk=trunk,
    **ADAPTER_L1["adapter"],
    conv_inplane=64,
    n_points=4,
    init_values=0.0,
    with_cffn=True,
    cffn_ratio=0.25,
    deform_ratio=1.0,
    add_vit_feature=True,
    use_extra_extractor=True,
    norm="SyncBN",
    # The released training converts the whole detector to SyncBN (convert_syncbn=True): the
    # trunk's stem and L1's layer-0 BatchNorms take the adapter's norm too.
    trunk_norm="${.norm}",
    out_features=["res2", "res3", "res4", "res5"],
    msda_impl=None,  # deformable-attention path (docs/ops.md); None: $PLAINMAMBA_MSDA, else auto
)
adapter.trunk.update(ADAPTER_L1["trunk"])
