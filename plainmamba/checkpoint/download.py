"""Download checkpoints by URL into the local cache, checked before they count as cached.

Downloads go through Detectron2's ``PathManager`` (iopath's HTTP handler: a progress bar, a
temporary file moved into place, one download per URL and cache folder). The cache folder is
``$DETECTRON2_CACHE`` when set, else iopath's (``$FVCORE_CACHE``, default
``~/.torch/iopath_cache``). On top of that, a file is only left in the cache once it is a
complete ``torch.save`` archive; anything else is deleted and reported with the URL and the
manual route.
"""

from __future__ import annotations

import os
import urllib.error
from typing import Optional

from .atomic import checkpoint_problem
from .convert import CheckpointError

__all__ = ["CheckpointDownloadError", "fetch_checkpoint", "is_url"]

_MANUAL = (
    "download it by hand (e.g. `wget {url}`) and pass the local file instead, or convert it "
    "first with `python tools/convert_official_checkpoint.py <file> <converted.pth>`"
)


class CheckpointDownloadError(CheckpointError):
    """A checkpoint URL that could not be downloaded, or whose download is damaged."""


def is_url(path: str) -> bool:
    """Whether ``path`` is an ``http(s)://`` address."""
    return path.startswith(("http://", "https://"))


def cache_dir() -> Optional[str]:
    """``$DETECTRON2_CACHE`` if set; ``None`` lets iopath pick (``$FVCORE_CACHE`` or its default)."""
    return os.environ.get("DETECTRON2_CACHE") or None


def fetch_checkpoint(url: str) -> str:
    """The local path of ``url``'s file, downloaded once into the cache and checked.

    Raises :class:`CheckpointDownloadError` naming the URL, the server's answer or the damage,
    and the manual route, when the server cannot be reached, answers with an error, or sends a
    file that is cut short; such a file is not left in the cache.
    """
    from detectron2.utils.file_io import PathManager

    manual = _MANUAL.format(url=url)
    try:
        local = PathManager.get_local_path(url, cache_dir=cache_dir())
    except urllib.error.ContentTooShortError as err:
        raise CheckpointDownloadError(
            f"{url}: the download stopped early ({err.reason}); nothing was cached. Retry, or "
            f"{manual}"
        ) from None
    except urllib.error.HTTPError as err:
        raise CheckpointDownloadError(
            f"{url}: the server answered {err.code} {err.reason}; {manual}"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CheckpointDownloadError(
            f"{url}: cannot download ({reason}); are you offline? {manual}"
        ) from None
    problem = checkpoint_problem(local)
    if problem is not None:
        discard(url, local)
        raise CheckpointDownloadError(
            f"{url}: the downloaded file is not a complete checkpoint ({problem}); it was "
            f"removed from the cache. Retry, or {manual}"
        )
    return local


def discard(url: str, local: str) -> None:
    """Remove ``url``'s cached copy ``local`` so that the next request downloads it again."""
    from detectron2.utils.file_io import PathManager

    try:
        os.remove(local)
    except FileNotFoundError:
        pass
    for handler in getattr(PathManager, "_path_handlers", {}).values():
        cache_map = getattr(handler, "cache_map", None)
        if isinstance(cache_map, dict):
            cache_map.pop(url, None)
