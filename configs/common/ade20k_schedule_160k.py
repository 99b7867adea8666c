"""The released ADE20K 160k schedule: poly decay (power 1) to 0 with a 1500-iteration warmup.

MMSegmentation (``policy='poly', power=1.0, min_lr=0, warmup='linear', warmup_iters=1500,
warmup_ratio=1e-6``) at iteration i of N = 160,000 uses
    poly(i)   = lr * (1 - i / N)
    warmup(i) = poly(i) * (1e-6 + (1 - 1e-6) * i / 1500)          for i < 1500.
Here the multiplier is a function of t = i / N (Detectron2's ``LRMultiplier``):
    PolynomialDecayParamScheduler(1.0, power=1)(t) = 1 - t,
and ``MMCVWarmupParamScheduler`` (warmup_length = 1500 / 160,000 = 0.009375, factor 1e-6)
multiplies it by the same ramp, so every iteration gets MMSegmentation's value. Checkpoints and
evaluation every 8,000 iterations, as released (20 per run).
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

from plainmamba.solver import MMCVWarmupParamScheduler

MAX_ITER = 160000
WARMUP_ITERS = 1500
PERIOD = 8000

train = get_config("common/train.py").train
train.max_iter = MAX_ITER
train.eval_period = PERIOD
train.checkpointer.period = PERIOD
train.checkpointer.max_to_keep = 3
train.device = "cuda"
train.seed = -1  # < 0: drawn at the start, saved in every checkpoint and reused by --resume
# Converted ImageNet weights of the trunk (tools/convert_official_checkpoint.py); the tap norms
# and both heads start from scratch.
train.init_checkpoint = ""

lr_multiplier = L(MMCVWarmupParamScheduler)(
    scheduler=L(PolynomialDecayParamScheduler)(base_value=1.0, power=1.0),
    warmup_length=WARMUP_ITERS / MAX_ITER,
    warmup_method="linear",
    warmup_factor=1e-6,
)
