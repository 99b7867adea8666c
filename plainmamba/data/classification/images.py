"""Decoding a classification record's image, from a file or an LMDB, to RGB."""

from __future__ import annotations

import io
import zlib

from PIL import Image

from ..mapper import ImageReadError, to_8bit
from .lmdb_format import cached_env

__all__ = ["read_classification_image"]


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
    """The RGB image of a record from any loader of this package.

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
        env = cached_env(path)
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
