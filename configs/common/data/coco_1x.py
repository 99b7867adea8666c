"""COCO instances with the released 1x pipeline (docs/model.md#coco-1x).

Resize to fit (1333, 800) keeping the ratio, horizontal flip 0.5; the model pads to a multiple of
32 (its backbone's size_divisibility). RGB input. Images without annotations are kept (the
released Mask R-CNN recipe); the RetinaNet configs drop them, as MMDetection's default does.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from plainmamba.data import SafeDatasetMapper, build_resumable_train_loader

dataloader = OmegaConf.create()

# Detectron2's train loader, resumable: see plainmamba.data.build_resumable_train_loader.
dataloader.train = L(build_resumable_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=False),
    mapper=L(SafeDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True, prob=0.5),
        ],
        image_format="RGB",
        use_instance_mask=True,
    ),
    total_batch_size=16,
    num_workers=4,
    aspect_ratio_grouping=True,  # Detectron2's default, by the records' width and height
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(SafeDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
