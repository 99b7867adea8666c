"""RetinaNet, PlainMamba-Adapter-L3, COCO 1x (published: 44.8 box AP).

Train (8 GPUs, total batch 16):
    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file configs/COCO/retinanet_plainmamba_adapter_l3_1x.py \
        train.init_checkpoint=checkpoints/plainmamba_l3_d2.pth
"""

from ..common.coco_schedule_1x import lr_multiplier, train
from ..common.data.coco_1x import dataloader
from ..common.models.plainmamba_adapter import ADAPTER_L3
from ..common.models.retinanet_plainmamba_adapter import model
from ..common.optim import AdamW as optimizer

model.backbone.bottom_up.update(ADAPTER_L3["adapter"])
model.backbone.bottom_up.trunk.update(ADAPTER_L3["trunk"])

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
