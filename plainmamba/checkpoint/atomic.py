"""Crash-safe file writes for checkpoints: a file is either complete or not there at all.

A writer that is killed (``kill -9``, power cut, full disk) while it writes ``name`` leaves a
partial file under a temporary name in the same folder; only a complete, flushed file is moved
onto ``name`` with ``os.replace``, which is atomic on POSIX and Windows file systems when both
paths are in one folder. Readers therefore see the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import zipfile
from typing import IO, Any, Callable, Iterator, List, Optional, Tuple

import torch

__all__ = [
    "TEMP_SUFFIX",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "checkpoint_problem",
    "list_checkpoints",
    "remove_stale_temp_files",
]

#: Suffix of the temporary files; a leftover one is the remains of an interrupted write.
TEMP_SUFFIX = ".tmp"
# mkstemp's names: "." + target name + "." + 8 random characters + suffix.
_TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
_ZIP_MAGIC = b"PK\x03\x04"


def _fsync_dir(folder: str) -> None:
    # The rename itself lives in the folder's metadata: without this, a power cut right after
    # os.replace may still show the old file on some file systems.
    if os.name != "posix":
        return
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse fsync on folders
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success move it onto ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files; mode must be 'w' or 'wb', not {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX)
    os.close(fd)  # reopened by name, so that the file object's .name says what it is
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_torch_save(
    obj: Any, path: str, save: Optional[Callable[[Any, IO[bytes]], None]] = None
) -> None:
    """``torch.save(obj, path)`` (or ``save(obj, file)``) that never leaves a partial file at
    ``path``."""
    with atomic_write(path, "wb") as f:
        (save or torch.save)(obj, f)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a usable checkpoint (missing, empty, truncated), else ``None``.

    Cheap: it reads the zip directory of a ``torch.save`` file, which is written last, so a
    file cut short anywhere lacks it. Files in torch's legacy (non-zip) format are only checked
    for being non-empty; loading them reports any other damage.
    """
    if not os.path.isfile(path):
        return "it does not exist"
    size = os.path.getsize(path)
    if size == 0:
        return "it is empty (0 bytes)"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        return f"it cannot be opened ({err})"
    if magic != _ZIP_MAGIC:
        return None
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"it is truncated or damaged ({size} bytes; {err})"
    if not any(n.endswith("data.pkl") for n in names):
        return "it is a zip file but not a torch checkpoint (no data.pkl)"
    return None


def list_checkpoints(save_dir: str, prefix: str = "model") -> List[Tuple[int, str]]:
    """``(iteration, path)`` of the periodic checkpoints ``{prefix}_NNNNNNN.pth``, oldest first."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+)\.pth")
    found = []
    try:
        names = os.listdir(save_dir)
    except OSError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match:
            found.append((int(match.group(1)), os.path.join(save_dir, name)))
    return sorted(found)


def remove_stale_temp_files(save_dir: str) -> List[str]:
    """Delete the temporary files that interrupted :func:`atomic_write` calls left behind.

    Only call this while no other process writes into ``save_dir``.
    """
    removed = []
    try:
        names = os.listdir(save_dir)
    except OSError:
        return removed
    for name in names:
        if _TEMP_NAME.fullmatch(name):
            path = os.path.join(save_dir, name)
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    return removed
