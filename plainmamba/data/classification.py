"""Image-classification data sets: class-folder trees, annotation lists and LMDB files.

Three sources give the same kind of record, a dict with ``file_name``, ``label`` (int) and
``image_id``:

* an image folder, ``root/<class_dir>/**/<image>`` (torchvision's ``ImageFolder`` layout);
* an annotation list, ``relative/path.JPEG label`` per line (MMClassification's ``meta/*.txt``,
  which the released PlainMamba recipe used);
* an LMDB written by :func:`create_lmdb_dataset` (or ``tools/create_lmdb_dataset.py``); its records
  also carry ``lmdb`` (the database path) and ``key``.

:func:`read_classification_image` turns any of them into an RGB ``PIL.Image``.

LMDB format written here (``FORMAT``): a directory LMDB (``data.mdb``/``lock.mdb``) whose main
database maps each image's key, its path relative to the image folder in ``/`` form and UTF-8, to
the image file's original bytes (never re-encoded). Metadata lives under reserved keys, so loading
never iterates the database: ``__format__`` (``FORMAT``), ``__count__`` (decimal), ``__keys__``
(the image keys joined by ``\\n``), ``__labels__`` (little-endian int32, one per key, same order),
``__crc32__`` (little-endian uint32 ``zlib.crc32`` of each value, same order) and ``__classes__``
(JSON list of class names, index = label). Reading a record checks its CRC, so flipped bytes in
a stored image fail with the LMDB and key named instead of decoding to another picture; LMDBs
written before ``__crc32__`` existed still load, unchecked, with one warning each.

The released PlainMamba tool (``tools/dataset_tools/create_lmdb_dataset.py`` in
ChenhongyiYang/PlainMamba) wrote a different, label-less LMDB: key = the image's base name, value
= the image decoded by OpenCV and re-encoded as JPEG, plus a ``total`` key; its configs took labels
from an annotation list (``data/imagenet/meta/{train,val}.txt``) and looked images up by base
name. :func:`load_lmdb` reads such a database when given that list as ``ann_file``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .mapper import ImageReadError, to_8bit

__all__ = [
    "FORMAT",
    "IMAGE_EXTENSIONS",
    "classification_dataset",
    "create_lmdb_dataset",
    "default_imagenet_root",
    "imagenet_class_labels",
    "list_class_folders",
    "load_annotation_list",
    "load_image_folder",
    "load_lmdb",
    "read_class_file",
    "read_classification_image",
    "read_lmdb_metadata",
    "register_classification_dataset",
    "register_imagenet",
]

PathLike = Union[str, os.PathLike]

FORMAT = "plainmamba-cls-lmdb-v1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_META_FORMAT = b"__format__"
_META_COUNT = b"__count__"
_META_KEYS = b"__keys__"
_META_LABELS = b"__labels__"
_META_CLASSES = b"__classes__"
# The released tool's only metadata key; its presence identifies such a database.
_RELEASED_TOTAL = b"total"
_SYNSET = re.compile(r"n\d{8}")
# Little-endian uint32 zlib.crc32 of each image's bytes, in the order of __keys__. Older LMDBs
# of this format lack it; they still load (with a warning), unchecked.
_META_CRC32 = b"__crc32__"

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Image folders, class files and annotation lists
# ----------------------------------------------------------------------------------------------


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
    return _scan_image_folder(root, class_names, class_source)[0]


def _scan_image_folder(
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


# ----------------------------------------------------------------------------------------------
# Writing LMDBs
# ----------------------------------------------------------------------------------------------


def _check_image_bytes(data: bytes, full_decode: bool) -> None:
    with Image.open(io.BytesIO(data)) as img:
        if full_decode:
            img.load()
        else:
            # Parses the headers (and PNG chunk CRCs) without decoding pixels: cheap, and catches
            # files that are not images at all.
            img.verify()


def _read_source(record: dict, full_decode: bool) -> tuple[bytes, Optional[Exception]]:
    path = record["file_name"]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return b"", e
    try:
        _check_image_bytes(data, full_decode)
    except Exception as e:  # PIL raises many types for bad data
        return b"", e
    return data, None


def _record_key(record: dict) -> str:
    key = str(record.get("image_id") or os.path.basename(record["file_name"]))
    if "\n" in key or (key.startswith("__") and key.endswith("__")) or key == "total":
        raise ValueError(f"image key {key!r} is reserved or contains a newline")
    return key


def _put_batch(env, batch: list[tuple[bytes, bytes]]) -> None:
    """Write ``batch`` in one transaction, doubling the map size until it fits."""
    import lmdb

    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in batch:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            # The failed transaction was aborted by the context manager; nothing was written.
            env.set_mapsize(env.info()["map_size"] * 2)


def create_lmdb_dataset(
    records: Iterable[dict],
    output: PathLike,
    class_names: Sequence[str],
    *,
    map_size: Optional[int] = None,
    commit_every: int = 1000,
    verify: bool = False,
    overwrite: bool = False,
    full_decode: bool = False,
    on_bad: Optional[Callable[[dict, Exception], None]] = None,
    num_threads: int = 8,
    progress: bool = False,
) -> int:
    """Write ``records`` (``file_name``, ``label``, ``image_id``) into a new LMDB at ``output``.

    Each value is the image file's original bytes; keys are the records' ``image_id`` and the
    metadata described in the module docstring is written last, so an interrupted run leaves no
    database that loads. The database is built next to ``output`` and moved there when complete;
    an existing ``output`` raises ``FileExistsError`` unless ``overwrite``.

    Every file is checked to be an image (headers; the pixels too with ``full_decode``). A bad
    file raises :class:`ImageReadError` naming it, unless ``on_bad`` is given: then it is
    called with the record and the error and the file is left out. ``map_size`` is the initial
    map size in bytes (default 1 GiB); it doubles whenever a transaction does not fit.
    ``verify`` reads every record back and compares its bytes (BLAKE2 digests of the sources)
    and label. Returns the number of images written.
    """
    import lmdb

    if commit_every < 1:
        raise ValueError(f"commit_every must be >= 1, got {commit_every}")
    class_names = [str(c) for c in class_names]
    output = Path(output).resolve()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; remove it or pass overwrite=True")
    records = list(records)
    seen = set()
    for r in records:
        key = _record_key(r)
        if key in seen:
            raise ValueError(f"two records have the key {key!r}; image_ids must be unique")
        seen.add(key)
        if not 0 <= int(r["label"]) < len(class_names):
            raise ValueError(
                f"label {r['label']} of {r['file_name']} is outside 0..{len(class_names) - 1}"
            )

    tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    labels: list[int] = []
    digests: list[bytes] = []
    crcs: list[int] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"writing {output.name}", unit="img")
    try:
        env = lmdb.open(
            str(tmp), map_size=map_size or (1 << 30), subdir=True, readahead=False, meminit=False
        )
        try:
            with ThreadPoolExecutor(max(1, num_threads)) as pool:
                for start in range(0, len(records), commit_every):
                    chunk = records[start : start + commit_every]
                    batch = []
                    # Reading and checking are I/O- and zlib/libjpeg-bound, so threads overlap.
                    for r, (data, err) in zip(
                        chunk, pool.map(lambda r: _read_source(r, full_decode), chunk)
                    ):
                        if err is not None:
                            if on_bad is None:
                                raise ImageReadError(
                                    f"cannot read image {r['file_name']}: "
                                    f"{type(err).__name__}: {err}",
                                    path=str(r["file_name"]),
                                ) from err
                            on_bad(r, err)
                            continue
                        key = _record_key(r)
                        batch.append((key.encode("utf-8"), data))
                        keys.append(key)
                        labels.append(int(r["label"]))
                        digests.append(hashlib.blake2b(data, digest_size=16).digest())
                        crcs.append(zlib.crc32(data))
                    _put_batch(env, batch)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
            meta = [
                (_META_KEYS, "\n".join(keys).encode("utf-8")),
                (_META_LABELS, np.asarray(labels, dtype="<i4").tobytes()),
                (_META_CRC32, np.asarray(crcs, dtype="<u4").tobytes()),
                (_META_CLASSES, json.dumps(class_names).encode("utf-8")),
                (_META_COUNT, str(len(keys)).encode()),
                (_META_FORMAT, FORMAT.encode()),
            ]
            _put_batch(env, meta)
            env.sync(True)
        finally:
            env.close()
        if verify:
            _verify(tmp, output, keys, labels, digests, class_names, progress)
        _forget_env(str(output))
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        os.replace(tmp, output)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp)
    return len(keys)


def _verify(
    path: Path,
    output: Path,
    keys: list[str],
    labels: list[int],
    digests: list[bytes],
    class_names: list[str],
    progress: bool,
) -> None:
    """Check the LMDB being built at ``path`` (to become ``output``) against what was written."""
    import lmdb

    loaded = load_lmdb(path)
    if [r["key"] for r in loaded] != keys or [r["label"] for r in loaded] != labels:
        raise RuntimeError(f"verifying {output}: stored keys or labels differ from the input")
    if read_lmdb_metadata(path)["class_names"] != class_names:
        raise RuntimeError(f"verifying {output}: stored class names differ from the input")
    it = zip(keys, digests)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(keys), desc=f"verifying {output.name}", unit="img")
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin(buffers=True) as txn:
            for key, digest in it:
                value = txn.get(key.encode("utf-8"))
                if value is None or hashlib.blake2b(value, digest_size=16).digest() != digest:
                    raise RuntimeError(f"verifying {output}: record {key!r} differs from its file")
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------
# Reading LMDBs
# ----------------------------------------------------------------------------------------------


def _open_readonly(path: Path):
    import lmdb

    if not path.exists():
        raise FileNotFoundError(f"LMDB {path} does not exist")
    try:
        return lmdb.open(
            str(path),
            readonly=True,
            lock=False,
            readahead=False,
            meminit=False,
            subdir=path.is_dir(),
        )
    except lmdb.Error as e:
        raise ValueError(f"{path} is not a readable LMDB: {e}") from e


# LMDBs without checksums already warned about in this process.
_WARNED_NO_CRC: set = set()

# Read-only environments opened by read_classification_image in this process. py-lmdb refuses to
# open one database twice in a process, and a handle must not be used across fork(), so a forked
# child (DataLoader worker, launcher) closes the handles it inherited and opens its own.
_ENVS: dict = {}
_ENVS_PID: Optional[int] = None
# Two threads opening the same database at once would trip py-lmdb's one-open-per-process guard.
_ENVS_LOCK = threading.Lock()


def _process_envs() -> dict:
    global _ENVS_PID
    if _ENVS_PID != os.getpid():
        for env in _ENVS.values():
            # Read-only and lock-free: closing only unmaps this process's copy; the parent's
            # handle is untouched.
            env.close()
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    return _ENVS


def _cached_env(path: str):
    env = _process_envs().get(path)
    if env is not None:
        return env
    with _ENVS_LOCK:
        envs = _process_envs()
        env = envs.get(path)
        if env is None:
            try:
                env = _open_readonly(Path(path))
            except (FileNotFoundError, ValueError) as e:
                raise ImageReadError(f"cannot open LMDB {path}: {e}", path=path) from e
            envs[path] = env
    return env


def _forget_env(path: str) -> None:
    """Close the cached handle of ``path`` (about to be replaced on disk), if any."""
    env = _process_envs().pop(path, None)
    if env is not None:
        env.close()


def _read_meta(path: Path) -> dict:
    import lmdb

    # Reuse a cached handle (a second open would fail); else open only for this read, so that
    # loading records leaves no handle for forked workers to inherit.
    cached = _process_envs().get(str(path))
    env = cached if cached is not None else _open_readonly(path)
    try:
        with env.begin() as txn:
            fmt = txn.get(_META_FORMAT)
            if fmt is None:
                return {"format": None, "released": txn.get(_RELEASED_TOTAL) is not None}
            if fmt.decode() != FORMAT:
                raise ValueError(f"{path} has LMDB format {fmt.decode()!r}, expected {FORMAT!r}")
            keys_blob = txn.get(_META_KEYS)
            crc_blob = txn.get(_META_CRC32)
            meta = {
                "format": FORMAT,
                "count": int(txn.get(_META_COUNT)),
                "class_names": json.loads(txn.get(_META_CLASSES)),
                "keys": keys_blob.decode("utf-8").split("\n") if keys_blob else [],
                "labels": np.frombuffer(txn.get(_META_LABELS), dtype="<i4"),
                "crc32": None if crc_blob is None else np.frombuffer(crc_blob, dtype="<u4"),
            }
    except lmdb.Error as e:
        # lmdb's message (e.g. "MDB_CORRUPTED: Located page was wrong type") names no file.
        raise ValueError(
            f"LMDB {path} is damaged: {type(e).__name__}: {e}; rebuild it with "
            "tools/create_lmdb_dataset.py"
        ) from e
    finally:
        if env is not cached:
            env.close()
    count = meta["count"]
    sizes = {len(meta["keys"]), len(meta["labels"])}
    if meta["crc32"] is not None:
        sizes.add(len(meta["crc32"]))
    if sizes != {count}:
        raise ValueError(
            f"metadata of LMDB {path} is inconsistent (count, keys, labels and checksums differ)"
        )
    return meta


def read_lmdb_metadata(path: PathLike) -> dict:
    """``{"format", "count", "class_names"}`` of an LMDB written by :func:`create_lmdb_dataset`."""
    path = Path(path).resolve()
    meta = _read_meta(path)
    if meta["format"] is None:
        raise ValueError(_not_ours_message(path, meta["released"]))
    return {k: meta[k] for k in ("format", "count", "class_names")}


def _not_ours_message(path: Path, released: bool) -> str:
    if released:
        return (
            f"{path} looks like an LMDB from the released PlainMamba tool, which stores no "
            "labels: pass its annotation list (meta/train.txt or meta/val.txt) as ann_file, or "
            "rebuild it with tools/create_lmdb_dataset.py"
        )
    return f"{path} is an LMDB without the metadata of tools/create_lmdb_dataset.py ({FORMAT})"


def load_lmdb(path: PathLike, ann_file: Optional[PathLike] = None) -> list[dict]:
    """Records of an LMDB from its metadata, without reading any image.

    Returns ``{"lmdb", "key", "label", "image_id", "file_name"}`` dicts with ``file_name`` =
    ``"{lmdb}::{key}"``. For an LMDB from the released PlainMamba tool (no labels) pass its
    MMClassification annotation list as ``ann_file``: labels come from the list and keys are
    the listed files' base names, as the released loader looked them up. ``ann_file`` also
    overrides the labels of an LMDB written here (keys are then the listed paths).

    Records of an LMDB with checksums also carry ``crc32``, which
    :func:`read_classification_image` checks; an LMDB without them (older, or released) is
    warned about once per process.
    """
    path = Path(path).resolve()
    meta = _read_meta(path)
    lmdb_path = str(path)
    if ann_file is None and meta["format"] is None:
        raise ValueError(_not_ours_message(path, meta["released"]))
    crcs = {}
    if meta.get("crc32") is not None:
        crcs = dict(zip(meta["keys"], meta["crc32"].tolist()))
    elif lmdb_path not in _WARNED_NO_CRC:
        _WARNED_NO_CRC.add(lmdb_path)
        logger.warning(
            "LMDB %s stores no checksums (written by an older tools/create_lmdb_dataset.py or "
            "the released tool): a corrupted image in it may decode to a wrong picture without "
            "an error; rebuild it with tools/create_lmdb_dataset.py to have them checked",
            lmdb_path,
        )
    if ann_file is not None:
        keyed_by_name = meta["format"] is None
        pairs = [
            (os.path.basename(r["image_id"]) if keyed_by_name else r["image_id"], r)
            for r in load_annotation_list("", ann_file)
        ]
    else:
        pairs = [
            (key, {"label": label, "image_id": key})
            for key, label in zip(meta["keys"], meta["labels"].tolist())
        ]
    out = []
    for key, r in pairs:
        record = {
            "lmdb": lmdb_path,
            "key": key,
            "label": int(r["label"]),
            "image_id": r["image_id"],
            "file_name": f"{lmdb_path}::{key}",
        }
        if key in crcs:
            record["crc32"] = crcs[key]
        out.append(record)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        # Pillow warns when a palette with transparency goes straight to RGB.
        img = img.convert("RGBA")
    return img.convert("RGB")


def _decode(data: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            # Pillow's convert("RGB") clips 16-bit grayscale at 255 (almost all white).
            return _to_rgb(to_8bit(img, where))
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        raise ImageReadError(
            f"cannot decode image {where}: {type(e).__name__}: {e}", path=where
        ) from e


def read_classification_image(record: dict) -> Image.Image:
    """The RGB image of a record from any loader of this module.

    Records with ``lmdb`` are read from that database (opened read-only, once per process) by
    ``key``; others from ``file_name``. Any image mode becomes RGB (alpha is dropped, as
    ``PIL.Image.convert("RGB")`` does; 16-bit grayscale is scaled to 8 bits); EXIF orientation
    is not applied, as in the usual ImageNet pipelines. A record with ``crc32`` (from
    :func:`load_lmdb`) must match the stored bytes. Failures raise :class:`ImageReadError` naming
    the file, or the LMDB and key.
    """
    if "lmdb" in record:
        import lmdb

        path, key = record["lmdb"], record["key"]
        where = f"{key!r} in LMDB {path}"
        env = _cached_env(path)
        try:
            with env.begin(buffers=False) as txn:
                data = txn.get(key.encode("utf-8"))
        except lmdb.Error as e:
            # e.g. CorruptedError from a damaged B-tree page; lmdb's message names no file.
            raise ImageReadError(
                f"cannot read key {where}: {type(e).__name__}: {e} (the LMDB is damaged; "
                "rebuild it with tools/create_lmdb_dataset.py)",
                path=f"{path}::{key}",
            ) from e
        if data is None:
            raise ImageReadError(f"key {where} does not exist", path=f"{path}::{key}")
        expected = record.get("crc32")
        if expected is not None and zlib.crc32(data) != expected:
            raise ImageReadError(
                f"image {where} is corrupted: its CRC-32 is {zlib.crc32(data):08x}, the LMDB "
                f"recorded {expected:08x} when it was written (rebuild it with "
                "tools/create_lmdb_dataset.py)",
                path=f"{path}::{key}",
            )
        return _decode(data, where)
    path = record["file_name"]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(
            f"cannot read image file {path}: {type(e).__name__}: {e}", path=path
        ) from e
    return _decode(data, path)


# ----------------------------------------------------------------------------------------------
# Detectron2 registration
# ----------------------------------------------------------------------------------------------


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
        return _scan_image_folder(root, names, class_source)
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
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "imagenet"


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
