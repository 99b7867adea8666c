"""Registering classification splits (image folders, annotation lists, LMDBs) with Detectron2,
ImageNet-1k's four splits among them, and reading them back.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..paths import datasets_root
from .lmdb_format import load_lmdb, read_lmdb_metadata
from .readers import PathLike, list_class_folders, load_annotation_list, scan_image_folder

__all__ = [
    "classification_dataset",
    "default_imagenet_root",
    "imagenet_class_labels",
    "register_classification_dataset",
    "register_imagenet",
]

logger = logging.getLogger(__name__)


_SYNSET = re.compile(r"n\d{8}")


@lru_cache(maxsize=1)
def _imagenet_info():
    from timm.data import ImageNetInfo

    return ImageNetInfo()


def imagenet_class_labels(class_ids: Sequence[str]) -> list[str]:
    """Human-readable names of ``class_ids``: ImageNet's (first WordNet lemma) when every id is
    an ImageNet-1k synset known to ``timm.data.ImageNetInfo``, else the ids themselves.

    A few ImageNet lemmas repeat (two "crane", two "maillot"); indices stay unique.
    """
    ids = [str(c) for c in class_ids]
    if not ids or not all(_SYNSET.fullmatch(c) for c in ids):
        return ids
    info = _imagenet_info()
    known = set(info.label_names())
    if not all(c in known for c in ids):
        return ids
    return [info.label_name_to_description(c).split(",")[0].strip() for c in ids]


# Arguments of each name registered by this module, to tell a repeat from a conflict.
_REGISTERED: dict[str, tuple] = {}
# Per registered name: its prepare function, and the splits that take their classes from it.
_PREPARE: dict[str, Optional[Callable[[], None]]] = {}
_DEPENDENTS: dict[str, list[str]] = {}


def _set_class_metadata(name: str, class_names: Sequence[str], class_labels) -> None:
    from detectron2.data import MetadataCatalog

    class_names = [str(c) for c in class_names]
    labels = list(class_labels) if class_labels is not None else imagenet_class_labels(class_names)
    if len(labels) != len(class_names):
        raise ValueError(
            f"dataset '{name}': {len(labels)} class labels for {len(class_names)} classes"
        )
    meta = MetadataCatalog.get(name)
    if meta.get("class_ids", None) is not None:
        if list(meta.class_ids) != class_names:
            raise ValueError(f"dataset '{name}': its classes changed since it was first loaded")
        return
    meta.set(thing_classes=[str(c) for c in labels], class_ids=class_names, num_classes=len(labels))


def register_classification_dataset(
    name: str,
    root: PathLike,
    fmt: str = "folder",
    class_names: Optional[Sequence[str]] = None,
    class_labels: Optional[Sequence[str]] = None,
    ann_file: Optional[PathLike] = None,
    prepare: Optional[Callable[[], None]] = None,
    classes_from: Optional[str] = None,
) -> str:
    """Register a classification split with Detectron2's ``DatasetCatalog``; returns ``name``.

    ``fmt="folder"``: ``root`` is a class-folder tree (:func:`load_image_folder`), or, with
    ``ann_file``, the image root of an annotation list (:func:`load_annotation_list`).
    ``fmt="lmdb"``: ``root`` is an LMDB (:func:`load_lmdb`; ``ann_file`` for released ones).

    ``class_names`` are the folder names / synsets in label order (default: the sorted folders
    that hold images, or the LMDB's stored names); LMDB labels are remapped to them by name.
    ``classes_from`` instead names another split registered here (normally the training split)
    whose class list this one uses, so that a class folder that is empty or missing here does
    not shift the labels; loading that split first checks this one (its folders with images, or
    its LMDB's classes) and raises ``ValueError`` naming both folders and every class found here
    but not there. ``class_labels`` are the human-readable names (default:
    :func:`imagenet_class_labels`). Nothing is read now: metadata
    ``thing_classes``, ``class_ids`` and ``num_classes`` are set now when ``class_names`` is given,
    else on the first load. ``evaluator_type="classification"``, ``root`` and ``format`` are
    always set. ``prepare`` (if any) runs before each load, e.g. to generate the files.

    Registering a name again with the same arguments is a no-op; with others, ``ValueError``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if fmt not in ("folder", "lmdb"):
        raise ValueError(f"fmt must be 'folder' or 'lmdb', got {fmt!r}")
    root = str(Path(root).resolve())
    ann = str(Path(ann_file).resolve()) if ann_file is not None else None
    names = None if class_names is None else tuple(str(c) for c in class_names)
    labels = None if class_labels is None else tuple(str(c) for c in class_labels)
    args = (root, fmt, names, labels, ann, classes_from)
    if name in _REGISTERED and name not in DatasetCatalog.list():
        # Removed from the catalog by someone else since; register afresh.
        del _REGISTERED[name]
    if name in _REGISTERED:
        if _REGISTERED[name] != args:
            raise ValueError(
                f"dataset '{name}' is already registered with (root, fmt, class_names, "
                f"class_labels, ann_file, classes_from)={_summary(_REGISTERED[name])}; cannot "
                f"register it again with {_summary(args)}"
            )
        return name
    if name in DatasetCatalog.list():
        raise ValueError(f"dataset '{name}' is already registered by other code")
    if names is not None and labels is not None and len(names) != len(labels):
        raise ValueError(f"dataset '{name}': {len(labels)} class labels for {len(names)} classes")
    if classes_from is not None:
        _check_classes_from(name, classes_from, names)

    def load() -> list[dict]:
        if prepare is not None:
            prepare()
        use, source = names, None
        if classes_from is not None:
            if classes_from not in _REGISTERED:
                raise ValueError(
                    f"dataset '{name}' takes its classes from '{classes_from}', which is no "
                    "longer registered"
                )
            use = tuple(_class_list(classes_from))
            source = f"'{classes_from}' ({_REGISTERED[classes_from][0]})"
        records, found = _load_split(root, fmt, use, ann, source)
        # Before the records go anywhere: a training split checks the splits that follow it.
        _check_dependents(name, found)
        _set_class_metadata(name, use or found, labels)
        if use is not None:
            bad = [r for r in records if not 0 <= r["label"] < len(use)]
            if bad:
                raise ValueError(
                    f"dataset '{name}': label {bad[0]['label']} of {bad[0]['image_id']} is "
                    f"outside 0..{len(use) - 1}"
                )
        return records

    DatasetCatalog.register(name, load)
    _REGISTERED[name] = args
    _PREPARE[name] = prepare
    if classes_from is not None and name not in _DEPENDENTS.setdefault(classes_from, []):
        _DEPENDENTS[classes_from].append(name)
    MetadataCatalog.get(name).set(evaluator_type="classification", root=root, format=fmt)
    if names is not None:
        _set_class_metadata(name, names, labels)
    return name


def _summary(args: tuple) -> tuple:
    # Long class lists would drown the message; their length and ends identify them well enough.
    def short(v):
        if isinstance(v, tuple) and len(v) > 4:
            return f"<{len(v)} names: {v[0]}, {v[1]}, ..., {v[-1]}>"
        return v

    return tuple(short(v) for v in args)


def _check_classes_from(name: str, classes_from: str, names: Optional[tuple]) -> None:
    if names is not None:
        raise ValueError(f"dataset '{name}': give class_names or classes_from, not both")
    if classes_from == name or classes_from not in _REGISTERED:
        raise ValueError(
            f"dataset '{name}': classes_from={classes_from!r} must name another split "
            "registered with register_classification_dataset (register it first)"
        )
    root, fmt, from_names, _, ann, from_from = _REGISTERED[classes_from]
    if from_names is None and from_from is None and ann is not None:
        raise ValueError(
            f"dataset '{name}': '{classes_from}' ({root}) takes its labels from an annotation "
            "list and has no class list; give class_names instead"
        )


def _class_list(name: str) -> list[str]:
    """The class list that labels the registered split ``name``, without listing its images."""
    root, fmt, names, _, ann, classes_from = _REGISTERED[name]
    if names is not None:
        return list(names)
    if classes_from is not None:
        return _class_list(classes_from)
    if _PREPARE.get(name) is not None:
        _PREPARE[name]()
    if fmt == "lmdb":
        return read_lmdb_metadata(root)["class_names"]
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder {root} (dataset '{name}') does not exist")
    return list_class_folders(root, skip_empty=True)


def _split_classes(root: str, fmt: str) -> Optional[list[str]]:
    """Classes with images in a split's folders, or stored in its LMDB; None if not there."""
    if fmt == "lmdb":
        return read_lmdb_metadata(root)["class_names"] if Path(root).exists() else None
    if not Path(root).is_dir():
        return None
    return list_class_folders(root, skip_empty=True)


def _check_dependents(name: str, classes: Optional[list[str]]) -> None:
    """Raise ValueError if a split that takes its classes from ``name`` has classes it lacks."""
    from detectron2.data import DatasetCatalog

    if classes is None:
        return
    known = set(classes)
    root = _REGISTERED[name][0]
    for dep in _DEPENDENTS.get(name, []):
        if dep not in _REGISTERED or dep not in DatasetCatalog.list():
            continue
        dep_root, dep_fmt, _, _, dep_ann, _ = _REGISTERED[dep]
        # Not there yet (made by its prepare) or labelled by a list: its own load checks it.
        found = None if dep_ann is not None else _split_classes(dep_root, dep_fmt)
        if found is None:
            continue
        extra = [c for c in found if c not in known]
        if not extra:
            present = set(found)
            missing = [c for c in classes if c not in present]
            if missing:
                logger.warning(
                    "%d class(es) of '%s' (%s) have no images in '%s' (%s): %s",
                    len(missing),
                    name,
                    root,
                    dep,
                    dep_root,
                    ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
                )
            continue
        shown = ", ".join(extra[:10]) + (" ..." if len(extra) > 10 else "")
        raise ValueError(
            f"the class lists of '{name}' ({root}) and '{dep}' ({dep_root}) disagree: "
            f"{len(extra)} class(es) of {dep_root} are not classes of {root}: {shown}. "
            f"'{dep}' takes its labels from '{name}'; make both hold the same class folders, or "
            "give both the same class_names"
        )


def _load_split(
    root: str,
    fmt: str,
    names: Optional[tuple],
    ann: Optional[str],
    class_source: Optional[str] = None,
) -> tuple[list[dict], Optional[list[str]]]:
    """Records of one registered split and the class names its source defines (if any)."""
    if fmt == "folder":
        if ann is not None:
            return load_annotation_list(root, ann), None
        return scan_image_folder(root, names, class_source)
    records = load_lmdb(root, ann)
    if ann is not None:
        return records, None
    stored = read_lmdb_metadata(root)["class_names"]
    if names is None or list(names) == stored:
        return records, stored
    index = {c: i for i, c in enumerate(names)}
    missing = [c for c in stored if c not in index]
    if missing:
        listed = f"the classes of {class_source}" if class_source else "the class list"
        raise ValueError(
            f"LMDB {root} has classes that are not among {listed}: {', '.join(missing[:10])}"
        )
    remap = [index[c] for c in stored]
    for r in records:
        r["label"] = remap[r["label"]]
    return records, list(names)


def default_imagenet_root() -> Path:
    """``$DETECTRON2_DATASETS/imagenet``, else ``datasets/imagenet``."""
    return datasets_root() / "imagenet"


def register_imagenet(root: Optional[PathLike] = None) -> dict[str, str]:
    """Register ImageNet-1k splits; returns ``{name: path}``. Nothing is read.

    ``imagenet_train`` / ``imagenet_val`` are the class-folder trees ``root/train`` and
    ``root/val``; ``imagenet_lmdb_train`` / ``imagenet_lmdb_val`` are ``root/lmdb/train.lmdb`` and
    ``root/lmdb/val.lmdb`` (from ``tools/create_lmdb_dataset.py --imagenet-root root``). Labels
    are the standard ImageNet-1k indices (sorted synsets), ``thing_classes`` the English names.
    """
    root = Path(root) if root is not None else default_imagenet_root()
    synsets = list(_imagenet_info().label_names())
    paths = {
        "imagenet_train": root / "train",
        "imagenet_val": root / "val",
        "imagenet_lmdb_train": root / "lmdb" / "train.lmdb",
        "imagenet_lmdb_val": root / "lmdb" / "val.lmdb",
    }
    for name, path in paths.items():
        register_classification_dataset(
            name, path, fmt="lmdb" if "lmdb" in name else "folder", class_names=synsets
        )
    return {name: str(Path(p).resolve()) for name, p in paths.items()}


def classification_dataset(names: Union[str, Sequence[str]]) -> list[dict]:
    """Records of one or more registered classification splits, concatenated.

    All of them must share one class list (metadata ``class_ids``).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if isinstance(names, str):
        names = [names]
    out: list[dict] = []
    classes = None
    for name in names:
        out.extend(DatasetCatalog.get(name))
        ids = MetadataCatalog.get(name).get("class_ids", None)
        if classes is not None and ids is not None and list(ids) != classes:
            raise ValueError(f"dataset '{name}' has other classes than '{names[0]}'")
        classes = list(ids) if ids is not None else classes
    return out
