"""PlainMamba-L3 on ImageNet-1k, 300 epochs (SPEC section 8; published top-1 82.3).

Released weights: convert with
    python tools/convert_official_checkpoint.py plainmamba_l3.pth l3_d2.pth
The data pipeline and epoch-based trainer are added by the ImageNet trainer (issue 5); this file
holds the model and the optimizer of the released recipe.
"""

from ..common.models.plainmamba import L3
from ..common.models.plainmamba_cls import model
from ..common.optim import AdamW as optimizer

model.backbone.update(L3)
model.backbone.drop_path_rate = 0.4

# Released recipe: total batch 1024, lr = 5e-4 * batch / 512, warmup 20 epochs.
total_batch_size = 1024
warmup_epochs = 20
optimizer.lr = 5e-4 * total_batch_size / 512
