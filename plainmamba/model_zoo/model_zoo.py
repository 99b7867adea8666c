"""Find, load and build the LazyConfigs shipped with this package (Detectron2's model-zoo API).

The configs live in the repository's ``configs/`` folder. The package reaches them through
``plainmamba/model_zoo/configs``: a symbolic link in a source checkout (editable install), a
copy made from ``package_data`` in a regular install. Either way they are found with
``importlib.resources``, and a config's relative imports (``from ..common ...``) resolve inside
that folder.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
from pathlib import Path
from typing import List, Optional

import torch

from .table import ZOO, ZooEntry

__all__ = [
    "ConfigNotFoundError",
    "WeightsNotAvailableError",
    "configs_root",
    "list_configs",
    "get_config_file",
    "get_config",
    "get",
    "entry",
]

CONVERTER = "tools/convert_official_checkpoint.py"


class ConfigNotFoundError(FileNotFoundError):
    """No config of that name in the model zoo; the message lists the available ones."""


class WeightsNotAvailableError(RuntimeError):
    """Trained weights were requested but none are hosted; the message says how to make them."""


def configs_root() -> Path:
    """The folder that holds the configs, as a real path (LazyConfig reads files from disk)."""
    root = importlib.resources.files("plainmamba.model_zoo") / "configs"
    if not isinstance(root, Path):
        raise RuntimeError(
            f"plainmamba's configs are not on the file system ({root!r}); install the package "
            f"unzipped (pip install, not a zipapp) so that LazyConfig can read them"
        )
    if not root.is_dir():
        raise RuntimeError(
            f"plainmamba's configs folder {root} is missing: in a source checkout it is a "
            f"symbolic link to ../../configs; reinstall the package (pip install -e .)"
        )
    return root


def list_configs() -> List[str]:
    """Model-zoo names of every config (``COCO/...py``), sorted; ``common/`` parts excluded."""
    root = configs_root()
    names = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("common/") or path.name == "__init__.py":
            continue
        names.append(rel)
    return sorted(names)


def _normalise(name: str) -> str:
    name = name.replace(os.sep, "/").strip()
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("configs/"):
        name = name[len("configs/") :]
    return name


def _not_found(name: str) -> ConfigNotFoundError:
    available = list_configs()
    close = difflib.get_close_matches(name, available, n=5, cutoff=0.4)
    stem = os.path.basename(name)
    close += [c for c in available if stem and stem in c and c not in close]
    rest = [c for c in available if c not in close]
    lines = [f"no config {name!r} in the PlainMamba model zoo."]
    if close:
        lines.append("Closest matches:")
        lines += [f"  {c}" for c in close]
    lines.append("Other configs:" if close else "Available configs:")
    lines += [f"  {c}" for c in rest]
    return ConfigNotFoundError("\n".join(lines))


def get_config_file(config_path: str) -> str:
    """The file path of a model-zoo config, e.g. ``COCO/mask_rcnn_plainmamba_adapter_l1_1x.py``.

    A leading ``configs/`` is accepted. Raises :class:`ConfigNotFoundError` listing the
    available configs (close matches first) when there is no such config.
    """
    name = _normalise(config_path)
    if not name.endswith(".py") or name.startswith("common/"):
        raise _not_found(name)
    path = configs_root() / name
    if not path.is_file():
        raise _not_found(name)
    return str(path)


def get_config(config_path: str):
    """The LazyConfig (an ``omegaconf.DictConfig``) of a model-zoo config."""
    from detectron2.config import LazyConfig

    return LazyConfig.load(get_config_file(config_path))


def entry(config_path: str) -> Optional[ZooEntry]:
    """Published figures and released checkpoint of a config (``None`` if there are none)."""
    return ZOO.get(_normalise(config_path))


def _weights_help(name: str) -> str:
    info = entry(name)
    if info is None:
        return (
            f"no trained weights are known for {name!r}: train it with "
            f"tools/lazyconfig_train_net.py --config-file configs/{name} and pass weights=<the "
            f"checkpoint>"
        )
    return f"no trained weights to download for {name!r}: {info.weights_source}"


def get(
    config_path: str,
    trained: bool = False,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    trust_checkpoint: bool = False,
) -> torch.nn.Module:
    """Build the model of a model-zoo config, in eval mode on ``device``.

    Args:
        config_path: model-zoo name, e.g. ``ImageNet/plainmamba_l1_300e.py``.
        trained: load the released trained weights: downloaded once into the cache
            (``$DETECTRON2_CACHE``, else iopath's ``$FVCORE_CACHE``), read with the safe loader
            and converted in memory. Configs without a released checkpoint raise
            :class:`WeightsNotAvailableError`; ``entry(config_path).weights_source`` says which.
        weights: a checkpoint to load (local path or URL): a converted one, a Detectron2 one, or
            a released MMClassification / MMDetection / MMSegmentation file, through
            :class:`plainmamba.checkpoint.PlainMambaCheckpointer` (strict: every key must fit).
        device: ``"cuda"`` if available else ``"cpu"`` by default.
        trust_checkpoint: unpickle ``weights`` without restrictions (it can then run code; see
            docs/checkpoints.md). By default a file that would call code is refused with
            :class:`plainmamba.checkpoint.UnsafeCheckpointError`.
    """
    from detectron2.config import instantiate

    from ..checkpoint import PlainMambaCheckpointer

    cfg = get_config(config_path)
    if trained and not weights:
        info = entry(config_path)
        if info is None or info.checkpoint_url is None:
            raise WeightsNotAvailableError(_weights_help(_normalise(config_path)))
        weights = info.checkpoint_url
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights!r} does not exist")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    model = instantiate(cfg.model)
    model.to(device)
    model.eval()
    if weights:
        PlainMambaCheckpointer(model, trusted=trust_checkpoint).load(weights)
    return model
