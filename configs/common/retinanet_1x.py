"""The released RetinaNet 1x recipe on COCO, size-independent (SPEC section 8).

Leaf configs in ``configs/COCO/`` pick the size of the adapter backbone and nothing else.
"""

from .coco_schedule_1x import lr_multiplier, train
from .data.coco_1x import dataloader
from .models.retinanet_plainmamba_adapter import model
from .optim import AdamW as optimizer

# MMDetection's RetinaNet pipeline drops images without annotations and has no masks.
dataloader.train.dataset.filter_empty = True
dataloader.train.mapper.use_instance_mask = False

optimizer.lr = 1e-4
optimizer.weight_decay = 0.05
optimizer.params.weight_decay = 0.05
# Global gradient-norm clipping of the released RetinaNet recipe.
train.clip_grad = dict(enabled=True, max_norm=35.0, norm_type=2.0)
# The adapter's stride-4 branch (up, spm.fc1, ad_norm1) is kept for checkpoint compatibility
# but not computed: DDP must allow unused parameters.
train.ddp.find_unused_parameters = True
