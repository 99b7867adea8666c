"""ImageNet-1k data of the released classification recipe (docs/model.md#imagenet-1k).

Training reads the LMDB files of ``tools/create_lmdb_dataset.py`` (the released recipe's format);
for the image folders instead, override the names:

    dataloader.train.dataset.names=imagenet_train dataloader.test.dataset.names=imagenet_val

Train: RandomResizedCrop 224 (bicubic), flip, RandAugment m9 / mstd 0.5 / increasing (per image,
:class:`~plainmamba.data.ClassificationMapper`); Random Erasing 0.25, Mixup 0.8 / CutMix 1.0 and
label smoothing 0.1 on the batch (``model.batch_augment``). Test: short side 256 (bicubic),
centre crop 224. Layout and conversion: ``datasets/README.md``.
"""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from plainmamba.data import ClassificationMapper, build_classification_train_loader
from plainmamba.data import register_imagenet
from plainmamba.evaluation import ClassificationEvaluator

register_imagenet()  # names and metadata only; nothing is read until a loader is built

dataloader = OmegaConf.create()
dataloader.train = L(build_classification_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="imagenet_lmdb_train"),
    mapper=L(ClassificationMapper)(is_train=True, image_size=224),
    total_batch_size=2048,
    num_workers=8,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="imagenet_lmdb_val", filter_empty=False),
    mapper=L(ClassificationMapper)(is_train=False, image_size=224, crop_pct=224 / 256),
    batch_size=64,
    num_workers=8,
)
dataloader.evaluator = L(ClassificationEvaluator)(topk=(1, 5))
