"""Classification records from image folders, class files and annotation lists.

A record is a dict with ``file_name``, ``label`` (int) and ``image_id``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

__all__ = [
    "IMAGE_EXTENSIONS",
    "PathLike",
    "list_class_folders",
    "load_annotation_list",
    "load_image_folder",
    "read_class_file",
    "scan_image_folder",
]

logger = logging.getLogger(__name__)


PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folders(root: PathLike, skip_empty: bool = False) -> list[str]:
    """Sorted names of the class folders in ``root`` (hidden folders excluded).

    With ``skip_empty``, folders holding no image (at any depth) are left out, as they are from
    the class list :func:`load_image_folder` derives (which warns about them).
    """
    # Hidden folders (.ipynb_checkpoints, .Trash) are never classes.
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not skip_empty:
        return folders
    return [f for f in folders if _has_image(Path(root) / f)]


def _walk_images(folder: Path) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if _is_image(f):
                yield os.path.join(dirpath, f)


def _has_image(folder: Path) -> bool:
    return next(iter(_walk_images(folder)), None) is not None


def _warn_empty(root: PathLike, empty: Sequence[str], consequence: str) -> None:
    shown = ", ".join(str(Path(root) / f) for f in empty[:10]) + (" ..." if len(empty) > 10 else "")
    logger.warning("%d class folder(s) hold no images (%s): %s", len(empty), consequence, shown)


def load_image_folder(
    root: PathLike,
    class_names: Optional[Sequence[str]] = None,
    *,
    class_source: Optional[str] = None,
) -> list[dict]:
    """Records of a class-folder tree ``root/<class_dir>/**/<image>``.

    The label is the position of the folder name in ``class_names`` when given, else in the
    sorted names of the folders that hold images. Folders without images are warned about
    (naming them) and contribute nothing; with ``class_names``, a folder that holds images but
    is not listed raises ``ValueError`` (naming ``class_source``, where the list came from, if
    given). Files are searched recursively inside each class folder; the extensions are
    :data:`IMAGE_EXTENSIONS`, any case. Returns ``{"file_name", "label", "image_id"}`` dicts
    (``image_id`` = path relative to ``root`` in ``/`` form), ordered by label, then path.
    """
    return scan_image_folder(root, class_names, class_source)[0]


def scan_image_folder(
    root: PathLike, class_names: Optional[Sequence[str]], class_source: Optional[str] = None
) -> tuple[list[dict], list[str]]:
    """Records of :func:`load_image_folder` and the class list that labels them."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    files = {f: sorted(_walk_images(root / f)) for f in list_class_folders(root)}
    empty = [f for f, paths in files.items() if not paths]
    if class_names is None:
        # An empty folder given a label would shift the labels of the folders after it.
        class_names = [f for f in files if files[f]]
        if empty:
            _warn_empty(root, empty, "left out of the class list derived from the folders")
        empty = []
    index = {c: i for i, c in enumerate(class_names)}
    if len(index) != len(class_names):
        raise ValueError(f"class names for {root} contain duplicates")
    unknown = [f for f in files if f not in index and files[f]]
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        listed = f"the classes of {class_source}" if class_source else "the class list"
        raise ValueError(
            f"{len(unknown)} class folder(s) of {root} hold images but are not among {listed}: "
            f"{shown}"
        )
    listed_empty = [f for f in empty if f in index]
    if listed_empty:
        _warn_empty(root, listed_empty, "their classes get no samples from this split")
    if len(listed_empty) < len(empty):
        _warn_empty(root, [f for f in empty if f not in index], "not in the class list; ignored")

    records = []
    for folder in sorted((f for f in files if f in index), key=index.__getitem__):
        label = index[folder]
        for path in files[folder]:
            records.append(
                {
                    "file_name": path,
                    "label": label,
                    "image_id": Path(os.path.relpath(path, root)).as_posix(),
                }
            )
    if not records:
        loose = [e.name for e in os.scandir(root) if e.is_file() and _is_image(e.name)]
        hint = (
            f"; it holds {len(loose)} images directly, but images must sit in one folder per "
            "class (for ImageNet val see datasets/README.md)"
            if loose
            else ""
        )
        raise ValueError(f"no images found in class folders under {root}{hint}")
    return records, list(class_names)


def read_class_file(path: PathLike) -> list[str]:
    """Class folder names from a file with one class per line, in file order.

    A line is ``synset`` or ``synset human readable name``; only the first token is returned.
    Blank lines and lines starting with ``#`` are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file {path} does not exist")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.split(maxsplit=1)[0])
    if not names:
        raise ValueError(f"class file {path} lists no classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class file {path} lists a class more than once")
    return names


def load_annotation_list(image_root: PathLike, ann_file: PathLike) -> list[dict]:
    """Records of an MMClassification annotation list: ``relative/path.JPEG label`` per line.

    This is the format of the released recipe's ``data/imagenet/meta/{train,val}.txt``
    (``n01440764/n01440764_10026.JPEG 0``, ``ILSVRC2012_val_00000001.JPEG 65``). Paths are taken
    relative to ``image_root``; files are not checked here.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation list {ann_file} does not exist")
    image_root = Path(image_root).resolve()
    records = []
    with open(ann_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            # The label is the last field; a path may contain spaces.
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(
                    f"{ann_file}:{lineno}: expected 'relative/path label', got {line!r}"
                )
            rel = Path(parts[0]).as_posix()
            records.append(
                {"file_name": str(image_root / rel), "label": int(parts[1]), "image_id": rel}
            )
    if not records:
        raise ValueError(f"annotation list {ann_file} has no entries")
    return records
