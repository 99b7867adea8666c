"""The classification trainer end to end on the generated shapes set: learning, crash and resume,
two processes, and ``--eval-only`` on a released-format checkpoint."""

import os
import re

import pytest
import torch

from helpers import FIXTURES, REPO, run_script

TRAIN_NET = "tools/lazyconfig_train_net.py"
QUICK = "configs/quickstart/plainmamba_tiny_cls_shapes.py"
RESUME = "tests/configs/cls_resume.py"


def copypaste(log: str, task: str = "classification") -> dict:
    """The last ``print_csv_format`` block of ``task`` in a log, as {metric: value}."""
    blocks = re.findall(
        rf"copypaste: Task: {task}\n.*?copypaste: (\S+)\n.*?copypaste: (\S+)", log, re.S
    )
    assert blocks, f"no {task} results in the log:\n{log[-3000:]}"
    names, values = blocks[-1]
    return dict(zip(names.split(","), map(float, values.split(","))))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
def test_tiny_classifier_learns(learning_runs):
    """The quick start, shortened: top-1 of the model and of its EMA far above chance (20%)."""
    code, log, out = learning_runs["classification"]
    assert code == 0, log[-4000:]
    results = copypaste(log)
    assert results["num_images"] == 400
    assert results["top1"] >= 60.0, results
    match = re.search(r"top-1 ([\d.]+) \(EMA of the weights: ([\d.]+)", log)
    assert match and float(match.group(2)) >= 45.0, log[-2000:]
    assert len(list((out / "vis").glob("*.png"))) == 2


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{path}: max difference {(a.double() - b.double()).abs().max()}"
    else:
        assert a == b, path


@pytest.mark.slow
def test_crash_and_resume_continues_exactly(tmp_path, data_root):
    """SIGKILL mid-run, then --resume: the run ends where an uninterrupted one does, with
    bit-identical weights, EMA, optimizer and scheduler state, augmentation and all."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    code, log = run_script(
        [TRAIN_NET, "--config-file", RESUME, f"train.output_dir={straight}"], data_root
    )
    assert code == 0, log[-3000:]

    # Checkpoint after iteration 4 (5 steps of 8 images); killed while loading step 8.
    env_crash = {"PLAINMAMBA_TEST_CRASH_AT": str(8 * 7 + 3)}
    os.environ.update(env_crash)
    try:
        code, log = run_script(
            [TRAIN_NET, "--config-file", RESUME, f"train.output_dir={crashed}"], data_root
        )
    finally:
        os.environ.pop("PLAINMAMBA_TEST_CRASH_AT")
    assert code == -9, log[-3000:]
    assert (crashed / "model_0000004.pth").is_file() and not (crashed / "model_final.pth").exists()
    assert (crashed / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    saved = _state(crashed / "model_0000004.pth")
    assert saved["iteration"] == 4 and "ema" in saved and saved["trainer"]["optimizer"]["state"]
    assert set(saved["trainer"]["hooks"]) == {"LRScheduler"}  # the EMA is stored once

    code, log = run_script(
        [TRAIN_NET, "--config-file", RESUME, "--resume", f"train.output_dir={crashed}"], data_root
    )
    assert code == 0, log[-3000:]
    assert "Data position restored: sample 40 " in log
    assert "EMA of the weights (decay 0.99) resumed from the checkpoint" in log

    a, b = _state(straight / "model_final.pth"), _state(crashed / "model_final.pth")
    assert a["iteration"] == b["iteration"] == 11
    for key in ("model", "ema", "trainer"):
        _assert_same(a[key], b[key], key)
    # The EMA is a real average: it differs from the final weights.
    assert not torch.allclose(a["ema"]["head.fc.weight"], a["model"]["head.fc.weight"])


@pytest.mark.slow
def test_two_process_training_gathers_evaluation(tmp_path, data_root):
    out = tmp_path / "ddp"
    code, log = run_script(
        [
            TRAIN_NET,
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            "--config-file",
            QUICK,
            f"train.output_dir={out}",
            "train.max_iter=6",
            "train.eval_period=6",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
        ],
        data_root,
    )
    assert code == 0, log[-4000:]
    assert "World size: 2" in log
    # Each process evaluates half of the 400 images; the main process reports all of them.
    assert copypaste(log)["num_images"] == 400
    # The ranks end with os._exit after flushing: the log file still ends with the evaluation.
    assert copypaste((out / "log.txt").read_text())["num_images"] == 400
    assert (out / "model_final.pth").is_file()


@pytest.mark.slow
def test_eval_only_on_a_released_checkpoint(tmp_path, data_root):
    """A released-format (MMClassification) file, converted or read directly, evaluates through
    the trainer's evaluator with the same top-1 as a forward pass computed here."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import DatasetCatalog

    fixture = torch.load(FIXTURES / "official_tiny_cls.pt", weights_only=True)
    released = tmp_path / "released.pth"
    torch.save({"state_dict": fixture["state_dict"], "meta": {}}, released)
    converted = tmp_path / "converted.pth"
    code, log = run_script(
        [
            "tools/convert_official_checkpoint.py",
            released,
            converted,
            "--config-file",
            "tests/configs/cls_fixture_eval.py",
        ],
        data_root,
    )
    assert code == 0, log[-3000:]

    opts = ["tests/configs/cls_fixture_eval.py"]
    tops = []
    for ckpt in (released, converted):
        code, log = run_script(
            [
                TRAIN_NET,
                "--eval-only",
                "--config-file",
                *opts,
                f"train.init_checkpoint={ckpt}",
                f"train.output_dir={tmp_path / 'eval'}",
            ],
            data_root,
        )
        assert code == 0, log[-3000:]
        result = copypaste(log)
        assert result["num_images"] == 400
        tops.append(result["top1"])
    assert tops[0] == tops[1]

    from plainmamba.checkpoint import PlainMambaCheckpointer
    from plainmamba.data import register_shapes_classification

    cfg = LazyConfig.load(str(REPO / "tests" / "configs" / "cls_fixture_eval.py"))
    # The set the subprocesses generated, under names of its own (registrations are per process).
    register_shapes_classification(data_root / "shapes_cls", prefix="evalonly_shapes")

    model = instantiate(cfg.model).eval()
    PlainMambaCheckpointer(model).load(str(converted))
    mapper = instantiate(cfg.dataloader.test.mapper)
    records = DatasetCatalog.get("evalonly_shapes_lmdb_val")
    hits = 0
    with torch.no_grad():
        for i in range(0, len(records), 50):
            batch = [mapper(dict(r)) for r in records[i : i + 50]]
            logits = torch.stack([o["logits"] for o in model(batch)])
            hits += int((logits.argmax(1) == torch.tensor([b["label"] for b in batch])).sum())
    assert tops[0] == pytest.approx(100.0 * hits / len(records))
