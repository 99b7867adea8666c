"""projects/demo/demo.py, run as a user would: detector, segmentor and classifier drawings, bad
inputs, video and webcam handling."""

import importlib.util
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers import REPO, run_script

DEMO = REPO / "projects" / "demo" / "demo.py"
DETECTOR = "quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py"  # model-zoo name
SEGMENTOR = "configs/quickstart/upernet_plainmamba_tiny_shapes.py"  # file path
CLASSIFIER = "ImageNet/plainmamba_l1_300e.py"


def _load_demo_module():
    spec = importlib.util.spec_from_file_location("plainmamba_demo_script", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scene(path, width, height, seed=0):
    """A flat background with a red disc and a blue square, saved as PNG."""
    rng = np.random.RandomState(seed)
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.randint(150, 230, 3)))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width // 8, height // 6, width // 8 + 50, height // 6 + 50], fill=(220, 40, 40))
    draw.rectangle([width // 2, height // 3, width // 2 + 45, height // 3 + 55], fill=(40, 40, 220))
    image.save(path)
    return np.asarray(image)


def _read(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.slow
def test_detector_draws_instances_and_reports_unreadable_inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    first = _scene(folder / "street.png", 160, 120)
    second = _scene(folder / "park.png", 200, 150, seed=1)
    (folder / "broken.png").write_bytes(b"this is not an image")
    out = tmp_path / "vis"
    code, log = run_script(
        [
            DEMO,
            "--config-file",
            DETECTOR,
            "--input",
            folder,
            tmp_path / "missing.jpg",
            "--output",
            out,
            "--confidence-threshold",
            "0",
        ],
        tmp_path / "data",
    )
    assert code == 1, log  # some inputs failed, the others were still written
    assert re.search(r"broken\.png: cannot read image", log), log
    assert re.search(r"missing\.jpg: no such file", log), log
    assert "2 input(s) failed" in log and "Traceback" not in log
    counts = {m[0]: int(m[1]) for m in re.findall(r"(\w+)\.png: (\d+) instances", log)}
    assert counts.keys() == {"street", "park"} and min(counts.values()) > 0, log
    assert sorted(p.name for p in out.iterdir()) == ["park.png", "street.png"]
    for name, source in (("street", first), ("park", second)):
        drawn = _read(out / f"{name}.png")
        assert drawn.shape == source.shape
        assert _diff(drawn, source) > 5  # boxes, masks and labels cover the image


@pytest.mark.slow
def test_segmentor_draws_label_map_and_legend(tmp_path):
    source = _scene(tmp_path / "scene.png", 192, 128)
    out = tmp_path / "vis"
    code, log = run_script(
        [DEMO, "--config-file", SEGMENTOR, "--input", str(tmp_path / "sc*.png"), "--output", out],
        tmp_path / "data",
    )
    assert code == 0, log
    assert re.search(r"scene\.png: \d+ classes in the label map", log), log
    drawn = _read(out / "scene.png")
    height, width = source.shape[:2]
    assert drawn.shape[0] == height and drawn.shape[1] > width  # legend panel on the right
    assert _diff(drawn[:, :width], source) > 5  # the coloured label map over the image
    legend = drawn[:, width:]
    assert (legend < 250).any(axis=2).mean() > 0.01  # swatches and names, not a blank panel


@pytest.mark.slow
def test_classifier_prints_and_draws_top5(tmp_path):
    source = _scene(tmp_path / "photo.jpg.png", 180, 140)
    target = tmp_path / "out" / "photo_top5.png"
    code, log = run_script(
        [
            DEMO,
            "--config-file",
            CLASSIFIER,
            "--input",
            tmp_path / "photo.jpg.png",
            "--output",
            target,
            "--opts",
            "model.backbone.depth=2",
        ],
        tmp_path / "data",
    )
    assert code == 0, log
    line = re.search(r"photo\.jpg\.png: top-5: (.*)", log)
    assert line, log
    entries = line.group(1).split("; ")
    assert len(entries) == 5 and all(re.fullmatch(r".+ \d+\.\d%", e) for e in entries), entries
    drawn = _read(target)
    assert drawn.shape == source.shape
    height, width = source.shape[:2]
    # The five lines are drawn from the top-left corner; the bottom-right stays the photo.
    assert _diff(drawn[: height // 2, : width // 2], source[: height // 2, : width // 2]) > 10
    assert _diff(drawn[-height // 4 :, -width // 4 :], source[-height // 4 :, -width // 4 :]) < 3


@pytest.mark.slow
def test_video_is_drawn_frame_by_frame(tmp_path):
    import cv2

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 96))
    assert writer.isOpened()
    for i in range(4):
        frame = np.full((96, 160, 3), 170, np.uint8)
        cv2.circle(frame, (30 + 25 * i, 48), 18, (0, 0, 230), -1)
        writer.write(frame)
    writer.release()
    out = tmp_path / "vis"
    code, log = run_script(
        [
            DEMO,
            "--config-file",
            SEGMENTOR,
            "--video-input",
            clip,
            "--output",
            out,
            "--max-frames",
            "3",
        ],
        tmp_path / "data",
    )
    assert code == 0, log
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 3
    assert frames[0].shape[0] == 96 and frames[0].shape[1] > 160  # with the legend panel


@pytest.mark.slow
def test_webcam_that_cannot_open_gives_a_message(tmp_path):
    code, log = run_script(
        [DEMO, "--webcam", "--camera-index", "97", "--output", tmp_path / "cam.mp4"],
        tmp_path / "data",
    )
    assert code == 2, log
    assert "cannot open the webcam (camera index 97)" in log
    assert "Traceback" not in log
    assert not (tmp_path / "cam.mp4").exists()


@pytest.mark.slow
def test_unknown_config_and_bad_override_are_usage_errors(tmp_path):
    _scene(tmp_path / "a.png", 64, 64)
    code, log = run_script(
        [DEMO, "--config-file", "COCO/mask_rcnn_l1.py", "--input", tmp_path / "a.png"],
        tmp_path / "data",
    )
    assert code == 2 and "Traceback" not in log, log
    assert "COCO/mask_rcnn_plainmamba_adapter_l1_1x.py" in log.split("Closest matches:")[1]
    code, log = run_script(
        [DEMO, "--config-file", SEGMENTOR, "--input", tmp_path / "a.png", "--opts", "model.dept=2"],
        tmp_path / "data",
    )
    assert code == 2 and "Traceback" not in log, log
    assert "'model.dept' does not exist" in log


def test_input_expansion_and_output_names(tmp_path):
    demo = _load_demo_module()
    (tmp_path / "d").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.png").write_bytes(b"x")
    files, missing = demo.expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "e" / "*.png"), str(tmp_path / "nope.png")]
    )
    assert [p.split("/")[-2:] for p in files] == [["d", "a.jpg"], ["d", "b.png"], ["e", "a.png"]]
    assert missing == [(str(tmp_path / "nope.png"), "no such file")]
    names = [p.split("/")[-1] for p in demo.output_paths(files, str(tmp_path / "out"))]
    assert names == ["a.png", "b.png", "a_1.png"]  # same stems kept apart
    assert demo.output_paths(files[:1], "x/one.png") == ["x/one.png"]
    with pytest.raises(ValueError, match="3 inputs"):
        demo.output_paths(files, str(tmp_path / "one.png"))
