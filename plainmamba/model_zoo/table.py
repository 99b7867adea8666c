"""The model zoo's table: every released config's published figures, our counts of the same
model, and its released checkpoint. The one place these numbers are written down.

MODEL_ZOO.md's table is :func:`markdown_rows` (``python -m plainmamba.model_zoo.table`` prints
it; tests/checkpoint/test_model_zoo.py checks that the document matches), and the tests and
``tools/analyze_model.py`` read the figures from :data:`ZOO`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = [
    "MEASURED_WITH",
    "RELEASE_URL",
    "RESULT_NAMES",
    "ZOO",
    "ZooEntry",
    "format_figure",
    "markdown_rows",
]

RELEASE_URL = "https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/"

#: How ``measured`` was taken (CPU, 2026-11-28): parameters, and FLOPs at ``flops_size``.
MEASURED_WITH = "tools/analyze_model.py --config-file NAME --tasks parameter flop"

#: Result keys of ``published``, in table order, with the names the documents use.
RESULT_NAMES = {
    "top1": "top-1",
    "top5": "top-5",
    "box_ap": "box AP",
    "mask_ap": "mask AP",
    "miou": "mIoU",
}


@dataclass(frozen=True)
class ZooEntry:
    """Published results, our counts and the released checkpoint of one config.

    ``published`` holds the paper's figures (``params_m``, ``top1``, ``top5``, ``box_ap``,
    ``mask_ap``, ``miou``, ``gflops``); an int is a figure published without decimals.
    ``measured`` holds this repository's counts of the same model (``params_m``, ``gflops``;
    :data:`MEASURED_WITH`). ``params_of`` says what the parameter counts cover (``backbone`` for
    ImageNet, where the paper counts the trunk without the classifier, else ``model``).
    ``flops_size`` is the (height, width) of the FLOPs.
    """

    config: str
    task: str
    arch: str
    published: Dict[str, float] = field(default_factory=dict)
    checkpoint: Optional[str] = None  # path under RELEASE_URL
    params_of: str = "model"
    flops_size: Optional[Tuple[int, int]] = None
    note: str = ""
    measured: Dict[str, float] = field(default_factory=dict)

    @property
    def checkpoint_url(self) -> Optional[str]:
        """The released checkpoint's download address, or ``None``."""
        return RELEASE_URL + self.checkpoint if self.checkpoint else None

    @property
    def has_trained_weights(self) -> bool:
        """Whether ``get(config, trained=True)`` can download released weights for it."""
        return self.checkpoint is not None

    @property
    def weights_source(self) -> str:
        """Where trained weights come from, in one line."""
        if self.checkpoint_url:
            return f"released checkpoint, downloaded and converted on use: {self.checkpoint_url}"
        if self.note:
            return f"no released checkpoint; {self.note}"
        return "no released checkpoint; train it with tools/lazyconfig_train_net.py"


def _zoo() -> Dict[str, ZooEntry]:
    out: Dict[str, ZooEntry] = {}
    # Published: the paper's tables and the released README.
    imagenet = {
        "L1": dict(params_m=7.3, top1=77.9, top5=94.0, gflops=3.0),
        "L2": dict(params_m=25.7, top1=81.6, top5=95.6, gflops=8.1),
        "L3": dict(params_m=50.5, top1=82.3, top5=95.9, gflops=14.4),
    }
    mask_rcnn = {
        "L1": dict(params_m=31, box_ap=44.1, mask_ap=39.1, gflops=388),
        "L2": dict(params_m=53, box_ap=46.0, mask_ap=40.6, gflops=542),
        "L3": dict(params_m=79, box_ap=46.8, mask_ap=41.2, gflops=696),
    }
    retinanet = {
        "L1": dict(params_m=19, box_ap=41.7),
        "L2": dict(params_m=40, box_ap=43.9),
        "L3": dict(params_m=67, box_ap=44.8),
    }
    upernet = {
        "L1": dict(params_m=35, miou=44.1),
        "L2": dict(params_m=55, miou=46.8),
        "L3": dict(params_m=81, miou=49.1),
    }
    # Ours (MEASURED_WITH): (params M, GFLOPs at the published FLOPs size) of L1, L2, L3.
    counted = {
        "imagenet": [(7.36, 3.02), (25.76, 8.09), (50.51, 14.45)],
        "mask_rcnn": [(31.21, 390.2), (53.20, 544.5), (79.78, 699.4)],
        "retinanet": [(19.36, 251.2), (41.30, 394.4), (67.86, 544.6)],
        "upernet": [(35.46, 175.9), (55.87, 286.7), (81.29, 421.3)],
    }
    # (name, task, published, ours, released checkpoint, what params count, FLOPs size); {n} is
    # the size's digit.
    families = [
        ("ImageNet/plainmamba_l{n}_300e.py", "classification", imagenet, "imagenet",
         "l{n}.pth", "backbone", (224, 224)),
        ("COCO/mask_rcnn_plainmamba_adapter_l{n}_1x.py", "detection", mask_rcnn, "mask_rcnn",
         "detection/maskrcnn/l{n}_1x.pth", "model", (800, 1280)),
        ("COCO/retinanet_plainmamba_adapter_l{n}_1x.py", "detection", retinanet, "retinanet",
         "detection/retinanet/l{n}_1x.pth", "model", (800, 1280)),
        ("ADE20K/upernet_plainmamba_l{n}_160k.py", "segmentation", upernet, "upernet",
         "segmentation/l{n}_upernet.pth", "model", (512, 2048)),
    ]  # fmt: skip
    for arch in ("L1", "L2", "L3"):
        for name, task, published, ours, checkpoint, params_of, size in families:
            name = name.format(n=arch[1])
            out[name] = ZooEntry(
                name,
                task,
                arch,
                published[arch],
                checkpoint.format(n=arch[1]),
                params_of=params_of,
                flops_size=size,
                measured=dict(zip(("params_m", "gflops"), counted[ours][int(arch[1]) - 1])),
            )
    out["quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py"] = ZooEntry(
        "quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py",
        "detection",
        "tiny",
        note="trained by `make demo` (projects/quickstart/shapes_detection.py), which writes "
        "output/shapes_demo/model_final.pth",
        measured=dict(params_m=1.76),
    )
    out["quickstart/upernet_plainmamba_tiny_shapes.py"] = ZooEntry(
        "quickstart/upernet_plainmamba_tiny_shapes.py",
        "segmentation",
        "tiny",
        note="trained by `make demo-seg` (projects/quickstart/shapes_segmentation.py), which "
        "writes output/shapes_seg_demo/model_final.pth",
        measured=dict(params_m=0.78),
    )
    return out


#: Every config with published figures or a released checkpoint, by model-zoo name.
ZOO: Dict[str, ZooEntry] = _zoo()


def format_figure(value: Optional[float], key: str = "", measured: bool = False) -> str:
    """A figure as the documents write it; ``"—"`` for ``None``.

    Published figures keep their published precision (an int has none, a float one decimal).
    Our counts: parameters with two decimals, GFLOPs with three significant digits or more.
    """
    if value is None:
        return "—"
    if measured:
        if key == "gflops":
            return f"{value:.2f}" if value < 100 else f"{value:.1f}"
        return f"{value:.2f}"
    return str(value) if isinstance(value, int) else f"{value:.1f}"


def markdown_rows() -> List[str]:
    """MODEL_ZOO.md's rows for every config with published figures, task by task, then by size.

    Columns: config, params published / ours, published results, GFLOPs published / ours,
    released checkpoint.
    """
    families = ("ImageNet/", "COCO/mask_rcnn", "COCO/retinanet", "ADE20K/")
    order = sorted(
        (n for n, e in ZOO.items() if e.published),
        key=lambda n: (next(i for i, f in enumerate(families) if n.startswith(f)), n),
    )
    rows = []
    for name in order:
        e = ZOO[name]
        pub, ours = e.published, e.measured

        def pair(key: str) -> str:
            return (
                f"{format_figure(pub.get(key), key)} / "
                f"{format_figure(ours.get(key), key, measured=True)}"
            )

        results = ", ".join(
            f"{label} {format_figure(pub[key], key)}"
            for key, label in RESULT_NAMES.items()
            if key in pub
        )
        link = f"[`{e.checkpoint}`]({e.checkpoint_url})" if e.checkpoint else "—"
        rows.append(f"| `{name}` | {pair('params_m')} | {results} | {pair('gflops')} | {link} |")
    return rows


if __name__ == "__main__":
    print("\n".join(markdown_rows()))
