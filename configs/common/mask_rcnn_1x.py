"""The released Mask R-CNN 1x recipe on COCO, size-independent (docs/model.md#coco-1x).

Leaf configs in ``configs/COCO/`` pick the size of the adapter backbone and nothing else.
"""

from detectron2.config import LazyCall as L

from plainmamba.solver import released_param_groups

from .coco_schedule_1x import lr_multiplier, train
from .data.coco_1x import dataloader
from .models.mask_rcnn_plainmamba_adapter import model
from .optim import AdamW as optimizer

optimizer.lr = 1e-4
optimizer.weight_decay = 0.05
# MMCV's paramwise_cfg of the released config, read on the released parameter names: no decay
# for names containing norm, bias, pos_embed, level_embed, .A_log, .D, .direction_Bs; BatchNorm
# weights named bn.* or stem.N.* (FPN, box head, stems) are decayed.
optimizer.params = L(released_param_groups)(recipe="coco", weight_decay=0.05)
