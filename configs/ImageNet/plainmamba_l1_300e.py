"""PlainMamba-L1 on ImageNet-1k, 300 epochs (SPEC section 8; published top-1 77.9).

Released weights: convert with
    python tools/convert_official_checkpoint.py plainmamba_l1.pth l1_d2.pth
The data pipeline and epoch-based trainer are added by the ImageNet trainer (issue 5); this file
holds the model and the optimizer of the released recipe.
"""

from ..common.models.plainmamba import L1
from ..common.models.plainmamba_cls import model
from ..common.optim import AdamW as optimizer

model.backbone.update(L1)
model.backbone.drop_path_rate = 0.2

# Released recipe: total batch 2048, lr = 5e-4 * batch / 512, warmup 15 epochs.
total_batch_size = 2048
warmup_epochs = 15
optimizer.lr = 5e-4 * total_batch_size / 512
