"""COCO annotation files that are not valid JSON fail with the file's name.

Detectron2's ``load_coco_json`` (behind ``register_coco_instances`` and the built-in
``coco_2017_*`` names) hands the file to pycocotools, whose ``json.load`` raises a bare
``JSONDecodeError`` ("Expecting ',' delimiter: line 1 column 52311 ...") for a truncated
download, naming no file. Importing :mod:`plainmamba.data` replaces ``load_coco_json`` in
``detectron2.data.datasets.coco`` (where the registered loaders look it up on each call) and in
``detectron2.data.datasets`` with :func:`load_coco_json`, which adds the path. Valid files load
exactly as before.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

__all__ = ["load_coco_json"]


def _checked(load: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(load)
    def load_coco_json(json_file, *args, **kwargs):
        try:
            return load(json_file, *args, **kwargs)
        except json.JSONDecodeError as e:
            # Same type, so callers that catch it still do; its message gets line and column.
            raise json.JSONDecodeError(
                f"annotation file {json_file} is not valid JSON (truncated or partly "
                f"downloaded?): {e.msg}",
                e.doc,
                e.pos,
            ) from e
        except UnicodeDecodeError as e:
            raise ValueError(
                f"annotation file {json_file} is not UTF-8 text, so not COCO JSON: {e}"
            ) from e

    load_coco_json.plainmamba_checked = True
    return load_coco_json


def _install() -> Callable[..., Any]:
    import detectron2.data.datasets as d2_datasets
    import detectron2.data.datasets.coco as d2_coco

    current = d2_coco.load_coco_json
    if not getattr(current, "plainmamba_checked", False):
        current = _checked(current)
        d2_coco.load_coco_json = current
    if getattr(d2_datasets, "load_coco_json", None) is not current:
        d2_datasets.load_coco_json = current
    return current


#: Detectron2's ``load_coco_json`` with JSON errors that name the file.
load_coco_json = _install()
