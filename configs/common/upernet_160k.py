"""The released UperNet 160k recipe on ADE20K, size-independent (docs/model.md#ade20k-160k).

Leaf configs in ``configs/ADE20K/`` pick the size and nothing else.
"""

from detectron2.config import LazyCall as L

from plainmamba.solver import released_param_groups

from .ade20k_schedule_160k import lr_multiplier, train
from .data.ade20k_semseg import dataloader
from .models.upernet_plainmamba import model
from .optim import AdamW as optimizer

optimizer.lr = 6e-5
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 0.01
# MMCV's paramwise_cfg of the released configs, read on the parameter names: no decay for names
# containing norm (the trunk's layer norms and norm_layer taps), .pos_embed, .A_log, .D,
# .direction_Bs; everything else is decayed: biases, ln1, and every BatchNorm (heads' bn.*,
# the stem).
optimizer.params = L(released_param_groups)(recipe="ade20k", weight_decay=0.01)

# As released (Pad(size=crop_size, pad_val=0, seg_pad_val=255)): every training crop is padded
# to the crop size, here in the model (zeros after normalisation, ignore labels).
model.train_pad_size = "${dataloader.train.mapper.augmentations[1].crop_size}"
