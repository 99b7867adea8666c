"""Where data sets live on disk: the one reader of ``$DETECTRON2_DATASETS`` in this package."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["datasets_root"]


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS``, else ``datasets`` (relative to the working directory).

    The variable is Detectron2's own data-set root (its builtin COCO and ADE20K registrations read
    it too), so one setting places every data set. It is read on every call, not cached, so that a
    process may set it before registering data sets.
    """
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))
