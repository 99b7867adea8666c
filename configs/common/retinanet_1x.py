"""The released RetinaNet 1x recipe on COCO, size-independent (docs/model.md#coco-1x).

Leaf configs in ``configs/COCO/`` pick the size of the adapter backbone and nothing else.
"""

from detectron2.config import LazyCall as L

from plainmamba.solver import released_param_groups

from .coco_schedule_1x import (
    COCO_TRAIN_IMAGES_WITH_ANNOTATIONS,
    lr_multiplier,
    set_train_images,
    train,
)
from .data.coco_1x import dataloader
from .models.retinanet_plainmamba_adapter import model
from .optim import AdamW as optimizer

# MMDetection's RetinaNet pipeline drops images without annotations and has no masks; its
# epochs are therefore shorter.
dataloader.train.dataset.filter_empty = True
dataloader.train.mapper.use_instance_mask = False
set_train_images(COCO_TRAIN_IMAGES_WITH_ANNOTATIONS)

optimizer.lr = 1e-4
optimizer.weight_decay = 0.05
# The released paramwise_cfg, read on the released parameter names (see mask_rcnn_1x.py).
optimizer.params = L(released_param_groups)(recipe="coco", weight_decay=0.05)
# Global gradient-norm clipping of the released RetinaNet recipe.
train.clip_grad = dict(enabled=True, max_norm=35.0, norm_type=2.0)
# The adapter's stride-4 branch (up, spm.fc1, ad_norm1) is kept for checkpoint compatibility
# but not computed: DDP must allow unused parameters.
train.ddp.find_unused_parameters = True
