"""The released UperNet 160k recipe on ADE20K, size-independent (SPEC section 8).

Leaf configs in ``configs/ADE20K/`` pick the size and nothing else.
"""

from .ade20k_schedule_160k import lr_multiplier, train
from .data.ade20k_semseg import dataloader
from .models.upernet_plainmamba import model
from .optim import AdamW as optimizer

optimizer.lr = 6e-5
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 0.01
optimizer.params.weight_decay = 0.01
# As released: norms, pos_embed, A_log, D and direction_Bs are exempt; biases are decayed.
optimizer.params.decay_bias = True
