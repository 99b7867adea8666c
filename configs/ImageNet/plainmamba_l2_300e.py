"""PlainMamba-L2 on ImageNet-1k, 300 epochs (SPEC section 8; published top-1 81.6).

Released weights: convert with
    python tools/convert_official_checkpoint.py plainmamba_l2.pth l2_d2.pth
The data pipeline and epoch-based trainer are added by the ImageNet trainer (issue 5); this file
holds the model and the optimizer of the released recipe.
"""

from ..common.models.plainmamba import L2
from ..common.models.plainmamba_cls import model
from ..common.optim import AdamW as optimizer

model.backbone.update(L2)
model.backbone.drop_path_rate = 0.2

# Released recipe: total batch 2048, lr = 5e-4 * batch / 512, warmup 20 epochs.
total_batch_size = 2048
warmup_epochs = 20
optimizer.lr = 5e-4 * total_batch_size / 512
