"""A small PlainMamba classifier on the generated shapes classification set: trains on one CPU."""

from plainmamba.data import CLS_SHAPE_CLASSES, register_shapes_classification

from ..common.imagenet_300e import dataloader, lr_multiplier, model, optimizer, train

register_shapes_classification()  # names and metadata only; the files appear on first use

NUM_CLASSES = len(CLS_SHAPE_CLASSES)
IMAGE_SIZE = 64
BATCH = 32
MAX_ITER = 400

model.backbone.update(
    embed_dim=64,
    depth=4,
    num_stem_convs=1,
    dwconv_layers=[],
    img_size=IMAGE_SIZE,
    patch_size=8,
    drop_path_rate=0.0,
)
model.num_classes = NUM_CLASSES
model.batch_augment.update(
    num_classes=NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=0.0, erasing_prob=0.25
)

dataloader.train.dataset.names = "cls_shapes_lmdb_train"
dataloader.train.mapper.update(image_size=IMAGE_SIZE, scale=(0.5, 1.0), auto_augment=None)
dataloader.train.total_batch_size = BATCH
dataloader.train.num_workers = 2
dataloader.test.dataset.names = "cls_shapes_lmdb_val"
dataloader.test.mapper.update(image_size=IMAGE_SIZE, crop_pct=1.0)
dataloader.test.batch_size = 50
dataloader.test.num_workers = 2

optimizer.lr = 2e-3
lr_multiplier.warmup_length = 20 / MAX_ITER

train.update(
    output_dir="./output/shapes_cls",
    max_iter=MAX_ITER,
    amp=dict(enabled=False),
    device="cpu",
    checkpointer=dict(period=100, max_to_keep=2),
    eval_period=MAX_ITER,
    log_period=20,
    ema=dict(enabled=True, decay=0.99),
    epochs=None,
    iters_per_epoch=None,
    # A fixed seed (model initialisation, sampling and augmentation), so that a run repeats.
    seed=0,
)
