"""LMDB files of classification images: writing, checking and loading them.

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
import shutil
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from ..mapper import ImageReadError
from .readers import PathLike, load_annotation_list

__all__ = ["FORMAT", "cached_env", "create_lmdb_dataset", "load_lmdb", "read_lmdb_metadata"]

logger = logging.getLogger(__name__)


FORMAT = "plainmamba-cls-lmdb-v1"

_META_FORMAT = b"__format__"
_META_COUNT = b"__count__"
_META_KEYS = b"__keys__"
_META_LABELS = b"__labels__"
_META_CLASSES = b"__classes__"
# The released tool's only metadata key; its presence identifies such a database.
_RELEASED_TOTAL = b"total"
# Little-endian uint32 zlib.crc32 of each image's bytes, in the order of __keys__. Older LMDBs
# of this format lack it; they still load (with a warning), unchecked.
_META_CRC32 = b"__crc32__"


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


def cached_env(path: str):
    """The read-only environment of the LMDB at ``path``, opened once per process."""
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
