"""The released Mask R-CNN 1x recipe on COCO, size-independent (SPEC section 8).

Leaf configs in ``configs/COCO/`` pick the size of the adapter backbone and nothing else.
"""

from .coco_schedule_1x import lr_multiplier, train
from .data.coco_1x import dataloader
from .models.mask_rcnn_plainmamba_adapter import model
from .optim import AdamW as optimizer

optimizer.lr = 1e-4
optimizer.weight_decay = 0.05
optimizer.params.weight_decay = 0.05
