#!/usr/bin/env python
"""Draw what a PlainMamba model predicts on images, a video or a webcam.

    python projects/demo/demo.py --config-file COCO/mask_rcnn_plainmamba_adapter_l1_1x.py \\
        --input photos/ more/*.jpg --output output/vis \\
        --opts train.init_checkpoint=output/mask_rcnn_plainmamba_adapter_l1_1x_d2.pth

``--config-file`` takes a path or a model-zoo name (``plainmamba.model_zoo.list_configs()``);
``--opts`` applies LazyConfig overrides (``key=value``), the weights included. Detectors are
drawn with their boxes, masks and labels, UperNet models as a coloured label map with a legend
on the right, classifiers with their top-5 classes (also printed). Each image gives a PNG of the
same name in the ``--output`` folder (or the ``--output`` file for a single image); a video gives
an mp4.

Exit status: 0 when every input was processed, 1 when some input could not be read or run (each
one is reported and the others are still written), 2 for a usage error (unknown config, bad
override, webcam that cannot be opened).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")
WINDOW = "PlainMamba demo"


def get_parser() -> argparse.ArgumentParser:
    """The command-line options (Detectron2's demo, for LazyConfigs)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        default="quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py",
        metavar="FILE",
        help="config file path or model-zoo name",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", help="image files, folders or glob patterns (quote the patterns)"
    )
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="read from a camera")
    parser.add_argument("--camera-index", type=int, default=0, help="camera for --webcam")
    parser.add_argument(
        "--max-frames", type=int, default=0, help="stop a video or webcam after N frames (0: all)"
    )
    parser.add_argument(
        "--output",
        help="folder for the drawings (one PNG per image, an mp4 per video), or a file name "
        "for a single image or video; without it, predictions are only printed",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a drawn detection",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="LazyConfig overrides, e.g. train.init_checkpoint=model.pth model.backbone.depth=2",
    )
    return parser


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Files named by ``patterns`` (files, folders of images, globs) and the ones that name
    nothing, as ``(pattern, reason)``."""
    files: List[str] = []
    missing: List[Tuple[str, str]] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                missing.append((pattern, "folder holds no images"))
            files += found
        elif any(c in pattern for c in "*?["):
            found = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
            if not found:
                missing.append((pattern, "no file matches the pattern"))
            files += found
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            missing.append((pattern, "no such file"))
    # A file named twice is drawn once.
    return list(dict.fromkeys(files)), missing


def output_paths(inputs: Sequence[str], output: str) -> List[str]:
    """Where each input's drawing goes: ``output`` itself for one input with an image file
    extension, else ``output/<stem>.png`` (stems made unique)."""
    if len(inputs) == 1 and output.lower().endswith(IMAGE_EXTENSIONS):
        return [output]
    if output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output):
        raise ValueError(f"--output {output} is a file name, but there are {len(inputs)} inputs")
    paths, used = [], set()
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem, 1
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        paths.append(os.path.join(output, name + ".png"))
    return paths


def load_config(config_file: str, opts: Sequence[str], confidence: float):
    """The LazyConfig of a path or model-zoo name, with the score threshold and ``opts``."""
    from detectron2.config import LazyConfig

    from plainmamba import model_zoo

    if os.path.isfile(config_file):
        cfg = LazyConfig.load(config_file)
    else:
        cfg = model_zoo.get_config(config_file)
    model = cfg.model
    if "roi_heads" in model and "test_score_thresh" in model.roi_heads.get("box_predictor", {}):
        model.roi_heads.box_predictor.test_score_thresh = confidence
    elif "test_score_thresh" in model:
        model.test_score_thresh = confidence
    if not opts:
        return cfg
    # Imported only when needed (it pulls in the training engine). Unlike
    # LazyConfig.apply_overrides, it rejects keys that do not exist (typos).
    from plainmamba.engine import apply_overrides

    return apply_overrides(cfg, list(opts), source=config_file)


def read_rgb(path: str) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (EXIF rotation applied)."""
    from detectron2.data.detection_utils import read_image

    image = read_image(path, format="RGB")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"not a colour image (shape {image.shape})")
    return image


def save_png(image_rgb: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image_rgb).save(path)


def run_images(demo, files: Sequence[str], output: Optional[str]) -> List[Tuple[str, str]]:
    """Predict and draw each file; returns the ``(path, reason)`` of those that failed."""
    from tqdm import tqdm

    failures: List[Tuple[str, str]] = []
    targets = output_paths(files, output) if output else [None] * len(files)
    for path, target in tqdm(list(zip(files, targets)), desc="images", unit="img"):
        try:
            image = read_rgb(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not fatal
            failures.append((path, f"cannot read image: {err}"))
            tqdm.write(f"error: {path}: cannot read image: {err}", file=sys.stderr)
            continue
        try:
            predictions, drawing = demo.run_on_image(image)
        except Exception as err:  # noqa: BLE001 - e.g. an image too small for the model
            failures.append((path, f"{type(err).__name__}: {err}"))
            tqdm.write(f"error: {path}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        tqdm.write(f"{path}: {demo.describe(predictions)}")
        if target:
            save_png(drawing, target)
    return failures


def video_output_path(source: str, output: str) -> str:
    if os.path.splitext(output)[1]:
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(source))[0] + ".mp4")


def run_stream(demo, capture, name: str, output: Optional[str], max_frames: int) -> int:
    """Draw every frame of an open capture into an mp4 (or a window); returns the frame count."""
    import cv2
    from tqdm import tqdm

    fps = capture.get(cv2.CAP_PROP_FPS) or 0
    fps = fps if 0 < fps < 1000 else 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    total = min(total, max_frames) if max_frames and total > 0 else (total or None)
    writer, frames = None, 0
    try:
        for frame in tqdm(demo.run_on_video(capture, max_frames), total=total, unit="frame"):
            if output:
                if writer is None:
                    path = video_output_path(name, output)
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                    # mp4v: the MPEG-4 codec that the headless OpenCV wheels can write.
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    size = (frame.shape[1], frame.shape[0])
                    writer = cv2.VideoWriter(path, fourcc, fps, size, True)
                    if not writer.isOpened():
                        raise RuntimeError(f"cannot write the video {path}")
                writer.write(frame)
            else:
                cv2.imshow(WINDOW, frame)
                if cv2.waitKey(1) in (27, ord("q")):
                    break
            frames += 1
    finally:
        if writer is not None:
            writer.release()
    return frames


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("fvcore", "detectron2", "d2", "iopath", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.webcam:
        import cv2

        capture = cv2.VideoCapture(args.camera_index)
        if not capture.isOpened():
            print(
                f"error: cannot open the webcam (camera index {args.camera_index}): no such "
                f"device, or no permission to use it. Use --camera-index to pick another camera, "
                f"or --video-input / --input for files.",
                file=sys.stderr,
            )
            return 2
        if not args.output and not _has_gui():
            capture.release()
            print(
                "error: this OpenCV build cannot open windows (opencv-python-headless); pass "
                "--output out.mp4 to record the webcam instead",
                file=sys.stderr,
            )
            return 2

    try:
        cfg = load_config(args.config_file, args.opts, args.confidence_threshold)
    except Exception as err:  # noqa: BLE001 - unknown config, bad override, broken config file
        print(f"error: {err}", file=sys.stderr)
        return 2

    sys.path.insert(0, HERE)
    from predictor import VisualizationDemo

    try:
        demo = VisualizationDemo(cfg, args.device, args.confidence_threshold)
    except Exception as err:  # noqa: BLE001 - bad config values or weights: say so, no traceback
        print(f"error: cannot build the model or load its weights: {err}", file=sys.stderr)
        return 2

    if args.input:
        files, missing = expand_inputs(args.input)
        for pattern, reason in missing:
            print(f"error: {pattern}: {reason}", file=sys.stderr)
        try:
            failures = missing + run_images(demo, files, args.output)
        except ValueError as err:  # a file name given as --output for several inputs
            print(f"error: {err}", file=sys.stderr)
            return 2
        done = len(files) - (len(failures) - len(missing))
        if args.output:
            print(f"wrote {done} drawing(s) to {args.output}")
        if failures:
            print(f"{len(failures)} input(s) failed:", file=sys.stderr)
            for path, reason in failures:
                print(f"  {path}: {reason}", file=sys.stderr)
            return 1
        return 0

    if args.video_input:
        import cv2

        capture = cv2.VideoCapture(args.video_input)
        if not os.path.isfile(args.video_input) or not capture.isOpened():
            print(f"error: {args.video_input}: cannot read the video", file=sys.stderr)
            return 1
        if not args.output and not _has_gui():
            print("error: pass --output for the drawn video (no window support)", file=sys.stderr)
            return 2
        frames = run_stream(demo, capture, args.video_input, args.output, args.max_frames)
        capture.release()
        if frames == 0:
            print(f"error: {args.video_input}: no frame could be decoded", file=sys.stderr)
            return 1
        if args.output:
            print(f"wrote {frames} frames to {video_output_path(args.video_input, args.output)}")
        return 0

    frames = run_stream(demo, capture, "webcam", args.output, args.max_frames)
    capture.release()
    print(f"processed {frames} webcam frames")
    return 0


def _has_gui() -> bool:
    """Whether this OpenCV build can open windows (the headless wheels cannot)."""
    import cv2

    info = cv2.getBuildInformation()
    gui = [line for line in info.splitlines() if line.strip().startswith("GUI:")]
    return bool(gui) and "NONE" not in gui[0].upper()


if __name__ == "__main__":
    sys.exit(main())
