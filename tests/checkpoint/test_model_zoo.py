"""plainmamba.model_zoo: every config loads and builds, names resolve (also from a regular,
non-editable install), errors name the alternatives, weights load strictly."""

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from helpers import REPO
from plainmamba import model_zoo
from plainmamba.model_zoo import table
from plainmamba.checkpoint import CheckpointError

CONFIGS = model_zoo.list_configs()
PUBLISHED = {
    "ImageNet": ["plainmamba_l1_300e.py", "plainmamba_l2_300e.py", "plainmamba_l3_300e.py"],
    "COCO": [
        f"{kind}_plainmamba_adapter_l{n}_1x.py"
        for kind in ("mask_rcnn", "retinanet")
        for n in "123"
    ],
    "ADE20K": [f"upernet_plainmamba_l{n}_160k.py" for n in "123"],
}


def test_list_covers_the_published_configs_and_no_building_blocks():
    for folder, names in PUBLISHED.items():
        for name in names:
            assert f"{folder}/{name}" in CONFIGS
    assert not any(c.startswith("common/") for c in CONFIGS)
    on_disk = {
        os.path.relpath(os.path.join(d, f), REPO / "configs")
        for d, _, files in os.walk(REPO / "configs")
        for f in files
        if f.endswith(".py") and "common" not in d
    }
    assert set(CONFIGS) == on_disk
    # Every config with published figures is a real config.
    assert set(model_zoo.ZOO) <= set(CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_builds(name):
    cfg = model_zoo.get_config(name)
    assert "model" in cfg
    model = model_zoo.get(name, device="cpu")
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    info = model_zoo.entry(name)
    if info is not None and "params_m" in info.published:
        counted = model.backbone if info.params_of == "backbone" else model
        params = sum(p.numel() for p in counted.parameters()) / 1e6
        # All within 2% of the paper but RetinaNet-L2 (3.2% over, see GETTING_STARTED.md).
        assert abs(params / info.published["params_m"] - 1) < 0.04, (name, params)


def test_config_file_paths_and_prefixes():
    path = model_zoo.get_config_file("configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py")
    assert path == model_zoo.get_config_file("COCO/mask_rcnn_plainmamba_adapter_l1_1x.py")
    assert os.path.isfile(path)
    assert os.path.realpath(path) == str(
        REPO / "configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py"
    )
    assert os.path.dirname(os.path.dirname(path)) == str(model_zoo.configs_root())


def test_unknown_config_lists_close_matches_first():
    with pytest.raises(model_zoo.ConfigNotFoundError) as info:
        model_zoo.get_config("COCO/mask_rcnn_l1.py")
    message = str(info.value)
    close, rest = message.split("Closest matches:")[1].split("Other configs:")
    assert "COCO/mask_rcnn_plainmamba_adapter_l1_1x.py" in close
    assert "ImageNet/plainmamba_l1_300e.py" in rest
    listed = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    assert sorted(listed) == CONFIGS  # every config is named once
    with pytest.raises(model_zoo.ConfigNotFoundError, match="Available configs"):
        model_zoo.get("common/optim.py")  # a building block, not a model


def test_entry_says_where_trained_weights_come_from():
    info = model_zoo.entry("COCO/mask_rcnn_plainmamba_adapter_l2_1x.py")
    assert info.has_trained_weights
    url = (
        "https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/detection/maskrcnn/l2_1x.pth"
    )
    assert url in info.weights_source
    tiny = model_zoo.entry("quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py")
    assert not tiny.has_trained_weights and "make demo" in tiny.weights_source
    with pytest.raises(model_zoo.WeightsNotAvailableError, match="make demo"):
        model_zoo.get("quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py", trained=True)


def test_weights_load_strictly_from_converted_and_released_files(tmp_path):
    name = "quickstart/plainmamba_tiny_cls_shapes.py"
    source = model_zoo.get(name, device="cpu")
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in source.state_dict().items()
    }
    converted = tmp_path / "converted.pth"
    torch.save({"model": state}, converted)
    released = tmp_path / "released.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 300}}, released)  # MMClassification layout
    for path in (converted, released):
        model = model_zoo.get(name, trained=True, weights=str(path))
        assert not model.training
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_zoo.get(name, weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("head.")}}, wrong)
    with pytest.raises(CheckpointError, match="missing in checkpoint"):
        model_zoo.get(name, weights=str(wrong))


@pytest.mark.slow
def test_configs_resolve_from_a_regular_install(tmp_path):
    """Build a wheel from a tree laid out as a fresh clone (no configs link: setup.py makes it),
    install it unzipped elsewhere, and load a config whose relative imports reach configs/common."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "setup.py", src)
    caches = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")

    def ignore(folder: str, names: list) -> set:
        # The link is a build product that git ignores; a clone has none.
        link = {"configs"} if os.path.basename(folder) == "model_zoo" else set()
        return set(caches(folder, names)) | link

    shutil.copytree(REPO / "plainmamba", src / "plainmamba", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "configs", src / "configs", ignore=caches)
    link = src / "plainmamba" / "model_zoo" / "configs"
    assert not os.path.lexists(link)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    assert os.path.islink(link) and os.readlink(link) == os.path.join("..", "..", "configs")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(target)
    assert "plainmamba/model_zoo/configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py" in names
    assert "plainmamba/model_zoo/configs/common/models/plainmamba_adapter.py" in names
    script = (
        "import plainmamba, sys\n"
        "from plainmamba import model_zoo\n"
        "cfg = model_zoo.get_config('COCO/mask_rcnn_plainmamba_adapter_l2_1x.py')\n"
        "print(plainmamba.__file__)\n"
        "print(model_zoo.get_config_file('ADE20K/upernet_plainmamba_l1_160k.py'))\n"
        "print(cfg.model.backbone.bottom_up.trunk.embed_dim, len(model_zoo.list_configs()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    package, config, last = proc.stdout.strip().splitlines()
    assert package.startswith(str(target))
    assert config.startswith(str(target)) and os.path.isfile(config)
    assert last == f"384 {len(CONFIGS)}"


# --------------------------------------------------------------------------------------------
# Published figures are written once, in the model zoo's table; the documents must agree with it.
# --------------------------------------------------------------------------------------------

ZOO_PUBLISHED = {name: e for name, e in model_zoo.ZOO.items() if e.published}


def _results(entry) -> str:
    """The published results of ``entry`` as the tables write them: ``44.1 / 39.1``."""
    return " / ".join(
        table.format_figure(entry.published[key], key)
        for key in table.RESULT_NAMES
        if key in entry.published
    )


def test_model_zoo_md_table_is_the_zoo_table():
    text = (REPO / "MODEL_ZOO.md").read_text()
    rows = table.markdown_rows()
    assert len(rows) == len(ZOO_PUBLISHED) == 12
    missing = [row for row in rows if row not in text.splitlines()]
    assert not missing, "MODEL_ZOO.md differs from plainmamba/model_zoo/table.py; print the rows "
    "with `python -m plainmamba.model_zoo.table`:\n" + "\n".join(missing)
    assert "\n".join(rows) in text, "rows out of order"
    for name, entry in model_zoo.ZOO.items():
        if not entry.published:  # the quick-start rows: our parameter count only
            row = f"| `{name}` | — / {entry.measured['params_m']:.2f} |"
            assert any(line.startswith(row) for line in text.splitlines()), row


def test_readme_results_table_matches_the_zoo():
    text = (REPO / "README.md").read_text().splitlines()

    def row(label: str, fmt) -> str:
        return f"| {label} | " + " | ".join(fmt(n) for n in "123") + " |"

    def imagenet(n: str) -> str:
        e = model_zoo.ZOO[f"ImageNet/plainmamba_l{n}_300e.py"]
        return f"{table.format_figure(e.published['top1'])} ({e.measured['params_m']:.2f} M)"

    expected = [
        row("ImageNet-1k top-1 (backbone params)", imagenet),
        row(
            "COCO Mask R-CNN 1x, box / mask AP",
            lambda n: _results(model_zoo.ZOO[f"COCO/mask_rcnn_plainmamba_adapter_l{n}_1x.py"]),
        ),
        row(
            "COCO RetinaNet 1x, box AP",
            lambda n: _results(model_zoo.ZOO[f"COCO/retinanet_plainmamba_adapter_l{n}_1x.py"]),
        ),
        row(
            "ADE20K UperNet 160k, mIoU",
            lambda n: _results(model_zoo.ZOO[f"ADE20K/upernet_plainmamba_l{n}_160k.py"]),
        ),
    ]
    for line in expected:
        assert line in text, f"README.md lacks the row {line!r} (plainmamba/model_zoo/table.py)"


def test_getting_started_tables_match_the_zoo():
    """Each GETTING_STARTED table row of a released config shows the zoo's figures."""
    lines = (REPO / "GETTING_STARTED.md").read_text().splitlines()
    checked = 0
    for name, entry in ZOO_PUBLISHED.items():
        base = name.split("/")[1]
        for line in lines:
            if not (line.startswith(f"| `configs/{name}`") or line.startswith(f"| `{base}`")):
                continue
            checked += 1
            assert f"| {_results(entry)} |" in line, (name, line)
            if " M |" in line:  # the tables that list parameters: ours, then published
                ours = table.format_figure(entry.measured["params_m"], "params_m", measured=True)
                published = table.format_figure(entry.published["params_m"], "params_m")
                assert f"| {ours} M | {published} M |" in line, (name, line)
    assert checked == len(ZOO_PUBLISHED)


@pytest.mark.parametrize("name", sorted(ZOO_PUBLISHED))
def test_config_docstrings_quote_the_zoo(name):
    """A leaf config's one-line docstring may quote published figures: only the zoo's."""
    doc = ast.get_docstring(ast.parse(open(model_zoo.get_config_file(name)).read())) or ""
    entry = model_zoo.ZOO[name]
    figures = {table.format_figure(v, k) for k, v in entry.published.items()}
    published = doc.partition("published")[2].partition(")")[0]
    quoted = set(re.findall(r"(?<![\w.-])\d+(?:\.\d+)?", published))
    assert quoted <= figures, (name, doc, figures)
