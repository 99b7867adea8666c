"""Run a PlainMamba LazyConfig model on single images and draw what it predicts.

:class:`Predictor` is the LazyConfig counterpart of Detectron2's ``DefaultPredictor``: it builds
``cfg.model`` in eval mode, loads ``cfg.train.init_checkpoint`` when one is set, and turns an RGB
image into the model's input with the config's own test-time pipeline. :class:`VisualizationDemo`
draws the output with Detectron2's ``Visualizer``: boxes, masks and labels for detectors, a
coloured label map with a legend for segmentors, and the top-5 classes for classifiers.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger("plainmamba.demo")

__all__ = [
    "Predictor",
    "VisualizationDemo",
    "dataset_name_of",
    "class_names_for",
    "draw_legend",
]

# ImageNet test pipeline of the released recipe, used when the config has no test mapper.


def _get(cfg: Any, dotted: str) -> Any:
    """``cfg.a.b.c`` or ``None`` when any part is missing."""
    node = cfg
    for part in dotted.split("."):
        try:
            if part not in node:
                return None
            node = node[part]
        except Exception:  # noqa: BLE001 - a leaf (str, list, ...) has no children
            return None
    return node


def dataset_name_of(cfg: Any) -> Optional[str]:
    """The test data set's registered name: ``dataloader.test.dataset.names`` (first one) or,
    for configs whose test set is built by a function, ``dataloader.evaluator.dataset_name``."""
    for key in ("dataloader.test.dataset.names", "dataloader.evaluator.dataset_name"):
        try:
            names = _get(cfg, key)
        except Exception:  # noqa: BLE001 - an interpolation that does not resolve
            names = None
        if names is None:
            continue
        if isinstance(names, str):
            return names
        try:
            names = list(names)
        except TypeError:
            continue
        if names and isinstance(names[0], str):
            return names[0]
    return None


def _imagenet_names() -> List[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


def class_names_for(cfg: Any, task: str, num_classes: Optional[int]) -> List[str]:
    """Class names from the test set's metadata (``thing_classes`` for detection and
    classification, ``stuff_classes`` for segmentation); for a 1000-class classifier without
    metadata, timm's ImageNet names; otherwise ``class i``. Padded to ``num_classes``."""
    from detectron2.data import MetadataCatalog

    key = "stuff_classes" if task == "segmentation" else "thing_classes"
    names: List[str] = []
    dataset = dataset_name_of(cfg)
    if dataset:
        names = list(MetadataCatalog.get(dataset).get(key, None) or [])
    if not names and task == "classification" and num_classes == 1000:
        names = _imagenet_names()
    count = max(num_classes or 0, len(names))
    return [names[i] if i < len(names) else f"class {i}" for i in range(count)]


def _num_classes(cfg: Any, task: str) -> Optional[int]:
    keys = {
        "classification": ["model.num_classes"],
        "segmentation": ["model.decode_head.num_classes"],
        "detection": ["model.roi_heads.num_classes", "model.num_classes"],
    }[task]
    for key in keys:
        value = _get(cfg, key)
        if isinstance(value, int):
            return value
    return None


def _palette(count: int) -> List[List[int]]:
    from detectron2.utils.colormap import colormap

    base = (colormap(rgb=True, maximum=255)).astype(int).tolist()
    rng = np.random.RandomState(0)
    while len(base) < count:
        base.append(rng.randint(0, 256, 3).tolist())
    return base[:count]


def draw_legend(
    image: np.ndarray,
    entries: Sequence[Tuple[str, Sequence[int], float]],
    width: Optional[int] = None,
) -> np.ndarray:
    """Append a legend panel (colour swatch, name, share of the image) to the right of ``image``.

    ``entries`` are ``(name, rgb colour 0-255, fraction)``, drawn in order; rows that do not fit
    the image height are summarised as ``+k more``. The panel width depends only on the image
    width, so every frame of a video gets the same size.
    """
    from PIL import Image, ImageDraw, ImageFont

    height, img_width = image.shape[:2]
    width = width or int(min(320, max(150, img_width * 0.4)))
    font_size = int(min(18, max(10, height / 28)))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    row = font_size + 6
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    rows = max(1, (height - 4) // row)
    shown = list(entries) if len(entries) <= rows else list(entries)[: rows - 1]
    y = 3
    for name, colour, share in shown:
        draw.rectangle(
            [4, y + 2, 4 + font_size, y + 2 + font_size], fill=tuple(int(c) for c in colour)
        )
        percent = 100 * share
        text = f"{name} {percent:.0f}%" if percent >= 1 else f"{name} <1%"
        while len(text) > 4 and draw.textlength(text, font=font) > width - font_size - 14:
            text = text[:-2] + "…"
        draw.text((font_size + 10, y + 1), text, fill=(0, 0, 0), font=font)
        y += row
    if len(shown) < len(entries):
        draw.text((4, y + 1), f"+{len(entries) - len(shown)} more", fill=(80, 80, 80), font=font)
    return np.concatenate([image, np.asarray(panel)], axis=1)


class Predictor:
    """Build ``cfg.model`` and run it on one RGB image at a time.

    Args:
        cfg: a LazyConfig with ``model`` (and optionally ``dataloader.test.mapper`` and
            ``train.init_checkpoint``).
        device: ``cuda`` or ``cpu`` (default: cuda when available).
    """

    def __init__(self, cfg: Any, device: Optional[str] = None):
        from detectron2.config import instantiate

        from plainmamba.analysis import task_of
        from plainmamba.checkpoint import PlainMambaCheckpointer

        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = instantiate(cfg.model).to(self.device).eval()
        checkpoint = _get(cfg, "train.init_checkpoint")
        if checkpoint:
            PlainMambaCheckpointer(self.model).load(checkpoint)
        else:
            logger.warning("no train.init_checkpoint given: the model has random weights")
        self.task = task_of(self.model)
        self.input_format = (
            getattr(self.model, "input_format", None)
            or _get(cfg, "dataloader.test.mapper.image_format")
            or "RGB"
        )
        self.class_names = class_names_for(cfg, self.task, _num_classes(cfg, self.task))
        self._augs = None
        self._cls_mapper = None
        if self.task == "classification":
            self._cls_mapper = self._classification_mapper()
        else:
            self._augs = self._test_augmentations()

    def _test_augmentations(self):
        import detectron2.data.transforms as T
        from detectron2.config import instantiate

        augs = _get(self.cfg, "dataloader.test.mapper.augmentations")
        if augs is None:
            logger.warning("the config has no dataloader.test.mapper.augmentations: no resizing")
            return T.AugmentationList([])
        return T.AugmentationList([instantiate(a) for a in augs])

    def _classification_mapper(self):
        """The config's test mapper when it can preprocess an image, else the released pipeline."""
        from detectron2.config import instantiate

        from plainmamba.data import ClassificationMapper

        mapper_cfg = _get(self.cfg, "dataloader.test.mapper")
        if mapper_cfg is not None:
            try:
                mapper = instantiate(mapper_cfg)
                if callable(getattr(mapper, "image_tensor", None)):
                    return mapper
            except Exception as err:  # noqa: BLE001 - fall back to the released pipeline
                logger.warning(f"cannot use the config's test mapper ({err}); using the default")
        return ClassificationMapper(is_train=False)  # short side 256 (bicubic), centre 224

    def model_input(self, image_rgb: np.ndarray) -> Dict[str, Any]:
        """The model's input dict for an HxWx3 uint8 RGB image."""
        if self.task == "classification":
            from PIL import Image

            return {"image": self._cls_mapper.image_tensor(Image.fromarray(image_rgb))}
        import detectron2.data.transforms as T

        height, width = image_rgb.shape[:2]
        image = image_rgb if self.input_format == "RGB" else image_rgb[:, :, ::-1]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self._augs(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor.float(), "height": height, "width": width}

    @torch.inference_mode()
    def __call__(self, image_rgb: np.ndarray) -> Dict[str, Any]:
        """The model's output for one image: ``instances``, ``sem_seg`` or ``logits``."""
        return self.model([self.model_input(image_rgb)])[0]


class VisualizationDemo:
    """A :class:`Predictor` and the drawing of its outputs.

    Args:
        cfg: the LazyConfig (overrides already applied).
        device: where the model runs.
        confidence_threshold: detections below this score are not drawn.
    """

    def __init__(self, cfg: Any, device: Optional[str] = None, confidence_threshold: float = 0.5):
        from detectron2.data.catalog import Metadata

        self.predictor = Predictor(cfg, device)
        self.task = self.predictor.task
        self.threshold = confidence_threshold
        names = self.predictor.class_names
        self.colors = _palette(len(names))
        self.metadata = Metadata(name=dataset_name_of(cfg) or "plainmamba_demo")
        if self.task == "segmentation":
            self.metadata.set(stuff_classes=names, stuff_colors=self.colors)
        else:
            self.metadata.set(thing_classes=names)

    def top_classes(self, logits: torch.Tensor, k: int = 5) -> List[Tuple[str, float]]:
        """The ``k`` most probable classes with their softmax probabilities."""
        probs = logits.float().softmax(-1)
        values, indices = probs.topk(min(k, probs.numel()))
        names = self.predictor.class_names
        return [(names[int(i)], float(v)) for v, i in zip(values, indices)]

    def describe(self, predictions: Dict[str, Any]) -> str:
        """A one-line summary of a prediction, for the console."""
        if "logits" in predictions:
            top = self.top_classes(predictions["logits"])
            return "top-5: " + "; ".join(f"{n} {100 * p:.1f}%" for n, p in top)
        if "sem_seg" in predictions:
            labels = predictions["sem_seg"].argmax(0)
            return f"{len(torch.unique(labels))} classes in the label map"
        instances = predictions["instances"]
        return f"{len(instances)} instances"

    def _instances(self, predictions: Dict[str, Any]):
        instances = predictions["instances"].to("cpu")
        if instances.has("scores"):
            instances = instances[instances.scores >= self.threshold]
        return instances

    def draw(self, image_rgb: np.ndarray, predictions: Dict[str, Any], video=None) -> np.ndarray:
        """The drawing of ``predictions`` over ``image_rgb`` (HxWx3 uint8 RGB in and out)."""
        from detectron2.utils.visualizer import ColorMode, Visualizer

        if "instances" in predictions:
            instances = self._instances(predictions)
            if video is not None:
                return video.draw_instance_predictions(image_rgb, instances).get_image()
            vis = Visualizer(image_rgb, self.metadata, instance_mode=ColorMode.IMAGE)
            return vis.draw_instance_predictions(instances).get_image()
        if "sem_seg" in predictions:
            labels = predictions["sem_seg"].argmax(0).to("cpu").numpy()
            vis = Visualizer(image_rgb, self.metadata)
            drawn = vis.draw_sem_seg(labels, area_threshold=0, alpha=0.6).get_image()
            ids, counts = np.unique(labels, return_counts=True)
            order = np.argsort(-counts)
            entries = [
                (self.metadata.stuff_classes[ids[i]], self.colors[ids[i]], counts[i] / labels.size)
                for i in order
            ]
            return draw_legend(drawn, entries)
        if "logits" in predictions:
            vis = Visualizer(image_rgb, self.metadata)
            height, width = image_rgb.shape[:2]
            font = max(8, int(min(height, width) / 18))
            for row, (name, prob) in enumerate(self.top_classes(predictions["logits"])):
                vis.draw_text(
                    f"{row + 1}. {name} {100 * prob:.1f}%",
                    (4, 4 + row * font * 1.6),
                    font_size=font,
                    color="w",
                    horizontal_alignment="left",
                )
            return vis.output.get_image()
        raise ValueError(f"cannot draw a prediction with keys {sorted(predictions)}")

    def run_on_image(self, image_rgb: np.ndarray) -> Tuple[Dict[str, Any], np.ndarray]:
        """Predict and draw one RGB image; returns ``(predictions, drawing)``."""
        predictions = self.predictor(image_rgb)
        return predictions, self.draw(image_rgb, predictions)

    def run_on_video(self, capture, max_frames: int = 0) -> Iterator[np.ndarray]:
        """Yield drawn frames (BGR, for ``cv2.VideoWriter``) of an open ``cv2.VideoCapture``."""
        from detectron2.utils.video_visualizer import VideoVisualizer

        video = VideoVisualizer(self.metadata) if self.task == "detection" else None
        count = 0
        while capture.isOpened():
            ok, frame = capture.read()
            if not ok:
                break
            rgb = np.ascontiguousarray(frame[:, :, ::-1])
            predictions = self.predictor(rgb)
            yield np.ascontiguousarray(self.draw(rgb, predictions, video=video)[:, :, ::-1])
            count += 1
            if max_frames and count >= max_frames:
                break
