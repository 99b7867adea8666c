"""Loading released PlainMamba checkpoints into the Detectron2 models of this project."""

from .convert import (
    CheckpointError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    check_state_dict,
    convert_official_classification,
    infer_arch,
    load_official_file,
    load_pickled_file,
    released_state_dict,
    save_detectron2_checkpoint,
)
from .convert_mmdet import (
    MMDET_KINDS,
    adapter_key,
    convert_mmdet_detector,
    detect_mmdet_kind,
    is_mmdet_detector,
    mmdet_to_d2_anchor_permutation,
)
from .convert_mmseg import convert_mmseg_upernet, is_mmseg_upernet, upernet_keys
from .checkpointer import PlainMambaCheckpointer
from .download import CheckpointDownloadError, fetch_checkpoint

__all__ = [
    "CheckpointDownloadError",
    "CheckpointError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "MMDET_KINDS",
    "adapter_key",
    "PlainMambaCheckpointer",
    "check_state_dict",
    "convert_mmdet_detector",
    "convert_mmseg_upernet",
    "convert_official_classification",
    "detect_mmdet_kind",
    "fetch_checkpoint",
    "infer_arch",
    "is_mmdet_detector",
    "is_mmseg_upernet",
    "load_official_file",
    "load_pickled_file",
    "mmdet_to_d2_anchor_permutation",
    "released_state_dict",
    "save_detectron2_checkpoint",
    "upernet_keys",
]
