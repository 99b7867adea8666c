"""The tiny classifier of ``tests/fixtures/official_tiny_cls.pt`` (10 classes) evaluated on the
generated shapes validation set: checks that ``--eval-only`` reads released checkpoints."""

from ...configs.quickstart.plainmamba_tiny_cls_shapes import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.update(
    embed_dim=32,
    depth=4,
    num_stem_convs=1,
    dwconv_layers=[0],
    img_size=224,
    patch_size=16,
    out_indices=[1, 3],
)
model.num_classes = 10
model.batch_augment.num_classes = 10
dataloader.test.num_workers = 0
train.ema.enabled = False
