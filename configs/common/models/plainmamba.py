"""The PlainMamba trunk, built once. Leaf configs pick a size with ``backbone.update(L2)``."""

from detectron2.config import LazyCall as L

from plainmamba.modeling import PlainMamba

# Published sizes (docs/model.md#sizes). Everything else is shared by the three.
L1 = dict(embed_dim=192, depth=24, num_stem_convs=1, dwconv_layers=[0])
L2 = dict(embed_dim=384, depth=24, num_stem_convs=2, dwconv_layers=[])
L3 = dict(embed_dim=448, depth=36, num_stem_convs=2, dwconv_layers=[])

backbone = L(PlainMamba)(
    **L1,
    img_size=224,
    patch_size=16,
    d_state=16,
    expand=2,
    conv_size=7,
    drop_path_rate=0.0,
    out_indices=[-1],
    final_norm=True,
    # Operator paths (docs/ops.md); None: the environment override if set, else "auto".
    scan_impl=None,  # auto: numba on CPU, the Triton kernel on CUDA
    dwconv_impl=None,  # auto: the Triton kernel on CUDA, the Numba kernel in CPU inference
)
