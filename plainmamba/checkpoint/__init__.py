"""Loading released PlainMamba checkpoints into the Detectron2 models of this project."""

from .convert import (
    CheckpointError,
    PlainMambaCheckpointer,
    check_state_dict,
    convert_official_classification,
    infer_arch,
    load_official_file,
    save_detectron2_checkpoint,
)

__all__ = [
    "CheckpointError",
    "PlainMambaCheckpointer",
    "check_state_dict",
    "convert_official_classification",
    "infer_arch",
    "load_official_file",
    "save_detectron2_checkpoint",
]
