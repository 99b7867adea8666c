"""ADE20K semantic segmentation with the released 160k pipeline (docs/model.md#ade20k-160k).

Train: resize to scale (2048, 512) times a ratio in [0.5, 2.0] keeping the aspect ratio, random
512 x 512 crop in which one class covers at most 75% (ignore pixels not counted), horizontal flip
0.5, photometric distortion; total batch 16. Test: resize to fit (2048, 512) keeping the ratio, sides
rounded up to multiples of 32 (the released ``AlignedResize``), whole image.
Each training crop is padded to 512 x 512 as released, by the model (``model.train_pad_size``
in upernet_160k.py). The released test resize reaches sides divisible by 32 in two
interpolations, here in one (docs/recipes.md#ade20k-160k).

Data: Detectron2's built-in ``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val`` under
``$DETECTRON2_DATASETS/ADEChallengeData2016``, labels from ``datasets/prepare_ade20k_sem_seg.py``
(label 0 becomes 255, the ignore value; the others shift down by one).
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.evaluation import SemSegEvaluator
from omegaconf import OmegaConf

from plainmamba.data import SafeDatasetMapper, SemSegLabelReader, build_resumable_train_loader
from plainmamba.data.transforms import PhotoMetricDistortion, ResizeByRatioRange

dataloader = OmegaConf.create()

# Detectron2's train loader, resumable: see plainmamba.data.build_resumable_train_loader.
dataloader.train = L(build_resumable_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="ade20k_sem_seg_train", filter_empty=False),
    mapper=L(SafeDatasetMapper)(
        is_train=True,
        augmentations=[
            L(ResizeByRatioRange)(img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
            L(T.RandomCrop_CategoryAreaConstraint)(
                crop_type="absolute",
                crop_size=(512, 512),
                single_category_max_area=0.75,
                ignored_category=255,
            ),
            L(T.RandomFlip)(),
            L(PhotoMetricDistortion)(image_format="${...image_format}"),  # the mapper's
        ],
        image_format="RGB",
        sem_seg_num_classes=150,  # unshifted ADE labels (0..150) fail on the first image
    ),
    total_batch_size=16,
    num_workers=4,
    # All crops are 512 x 512 (and ADE20K records carry no image size to group by).
    aspect_ratio_grouping=False,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="ade20k_sem_seg_val", filter_empty=False),
    mapper=L(SafeDatasetMapper)(
        is_train=False,
        augmentations=[
            L(ResizeByRatioRange)(img_scale=(2048, 512), ratio_range=None, size_divisor=32)
        ],
        image_format="${...train.mapper.image_format}",
        sem_seg_num_classes="${...train.mapper.sem_seg_num_classes}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(SemSegEvaluator)(
    dataset_name="${..test.dataset.names}",
    sem_seg_loading_fn=L(SemSegLabelReader)(),  # Detectron2 0.7's reader fails on NumPy 2
)
