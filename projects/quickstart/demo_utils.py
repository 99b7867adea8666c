"""Shared steps of the quick-start training demos (``shapes_detection.py``,
``shapes_segmentation.py``, ``shapes_classification.py``)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_common_arguments(parser: Any, output_dir: str, num_vis: int) -> None:
    """The arguments every training demo takes: output folder, pictures, seed, threads, overrides."""
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", output_dir))
    parser.add_argument("--num-vis", type=int, default=num_vis, help="validation images to draw")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed (model initialisation, sampling, augmentation); default: the "
        "config's train.seed, 0. The generated data set does not depend on it.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for PyTorch (default: PyTorch's choice, one per core). On a machine "
        "that other jobs keep busy, --threads 1 is often faster.",
    )
    parser.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")


def set_threads(threads: Any) -> None:
    """``torch.set_num_threads(threads)`` when given (results depend on it: see the docs)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def train_config(
    config_file: str, output_dir: str, opts: Sequence[str], seed: Any = None
) -> Tuple[Any, Dict[str, Any], float]:
    """Train ``config_file`` with the trainer of ``tools/lazyconfig_train_net.py``.

    ``seed`` (when not None) sets ``train.seed``; overrides in ``opts`` come after it. Returns
    the config with the overrides applied, the final evaluation results and the minutes that
    training and evaluation took.
    """
    from detectron2.config import LazyConfig

    from plainmamba.engine import default_train_argument_parser
    from plainmamba.engine import main as train_main

    overrides = [f"train.output_dir={output_dir}"]
    if seed is not None:
        overrides.append(f"train.seed={int(seed)}")
    overrides += list(opts)
    args = default_train_argument_parser().parse_args(["--config-file", config_file, *overrides])
    start = time.time()
    results = train_main(args) or {}
    minutes = (time.time() - start) / 60
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), overrides)
    return cfg, results, minutes


def load_trained(cfg: Any, checkpoint: str) -> Any:
    """The config's model in eval mode with ``checkpoint`` loaded."""
    from detectron2.config import instantiate

    from plainmamba.checkpoint import PlainMambaCheckpointer

    model = instantiate(cfg.model).eval()
    PlainMambaCheckpointer(model).load(checkpoint)
    return model


# Height of the caption strip above each panel of a side-by-side picture.
CAPTION_HEIGHT = 22


def run_summary(cfg: Any) -> str:
    """``seed S, T threads`` of a finished run, for the demos' summaries."""
    import torch

    threads = torch.get_num_threads()
    return f"seed {cfg.train.seed}, {threads} thread{'' if threads == 1 else 's'}"


def _caption(text: str, width: int) -> np.ndarray:
    """A white ``CAPTION_HEIGHT`` x ``width`` strip with ``text`` in black."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, CAPTION_HEIGHT), (255, 255, 255))
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    ImageDraw.Draw(strip).text((4, 3), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def save_side_by_side(
    left: np.ndarray,
    right: np.ndarray,
    out_dir: str,
    name: str,
    captions: Sequence[str] = ("ground truth", "prediction"),
) -> str:
    """Write ``left | right`` (HxWx3 uint8), each under its caption, as ``out_dir/name.png``.

    The picture is ``CAPTION_HEIGHT`` pixels taller than the panels; returns its path.
    """
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, os.path.splitext(os.path.basename(name))[0] + ".png")
    panels = [
        np.concatenate([_caption(text, panel.shape[1]), panel[..., :3]], axis=0)
        for text, panel in zip(captions, (left, right))
    ]
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
    return path


def val_records(cfg: Any, num: int, keep: Any = None) -> List[dict]:
    """The first ``num`` records of the evaluator's data set (those ``keep`` accepts)."""
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get(cfg.dataloader.evaluator.dataset_name)
    return [r for r in records if keep is None or keep(r)][:num]
