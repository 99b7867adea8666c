"""Model zoo: the configs shipped with PlainMamba, by name (like ``detectron2.model_zoo``).

from plainmamba import model_zoo

model_zoo.list_configs()                       # every config, e.g. 'COCO/mask_rcnn_...py'
cfg = model_zoo.get_config("COCO/mask_rcnn_plainmamba_adapter_l1_1x.py")
model = model_zoo.get("ImageNet/plainmamba_l1_300e.py", weights="output/l1_d2.pth")
"""

from .model_zoo import (
    ConfigNotFoundError,
    WeightsNotAvailableError,
    configs_root,
    entry,
    get,
    get_config,
    get_config_file,
    list_configs,
)
from .table import RELEASE_URL, ZOO, ZooEntry

__all__ = [
    "RELEASE_URL",
    "ZOO",
    "ConfigNotFoundError",
    "WeightsNotAvailableError",
    "ZooEntry",
    "configs_root",
    "entry",
    "get",
    "get_config",
    "get_config_file",
    "list_configs",
]
