"""Crash-safe checkpoints and exact resumes (CPU): issue 17, items 2 and 3.

A resumed run must equal an uninterrupted one bit for bit: same batches, same augmentation
draws, same losses, same final weights, EMA and optimizer state. Interruptions are simulated
in-process by an exception in the middle of an iteration (after a checkpoint), and once for
real by a SIGKILL while the final checkpoint is being written.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import REPO
from detectron2.config import LazyCall as L
from detectron2.engine import SimpleTrainer
from detectron2.utils.env import seed_all_rng

from plainmamba.checkpoint import CheckpointError, PlainMambaCheckpointer
from plainmamba.data import ResumableBatchStream, ResumableTrainingSampler
from plainmamba.engine import do_train, load_config

CLS_CONFIG = REPO / "configs" / "quickstart" / "plainmamba_tiny_cls_shapes.py"
DET_CONFIG = REPO / "configs" / "quickstart" / "mask_rcnn_plainmamba_adapter_tiny_shapes.py"
SEG_CONFIG = REPO / "configs" / "quickstart" / "upernet_plainmamba_tiny_shapes.py"
KILL_CONFIG = REPO / "tests" / "configs" / "toy_kill_in_save.py"
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")


class Interrupted(Exception):
    """Stands in for a kill in the middle of an iteration."""


@pytest.fixture
def losses(monkeypatch):
    """Every iteration's unsmoothed loss dict of the in-process runs, keyed by (run, iteration);
    the run raises :class:`Interrupted` during the iteration in ``crash_at[run]``."""
    record, crash_at, run = {}, {}, ["?"]
    write = SimpleTrainer._write_metrics
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads cost more than they give on a busy machine

    def spy(self, loss_dict, data_time, prefix="", iter=None):
        record[run[0], self.iter] = {k: v.detach().clone() for k, v in loss_dict.items()}
        if crash_at.get(run[0]) == self.iter:
            raise Interrupted(f"simulated kill during iteration {self.iter}")
        return write(self, loss_dict, data_time, prefix, iter)

    monkeypatch.setattr(SimpleTrainer, "_write_metrics", spy)
    yield record, crash_at, run
    torch.set_num_threads(threads)


def _train(make_cfg, out, run, losses, resume=False, crash_at=None, **changes):
    record, crashes, current = losses
    current[0] = run
    if crash_at is not None:
        crashes[run] = crash_at
    cfg = make_cfg(out, **changes)
    seed_all_rng(0)  # the same initial weights in every run, as default_setup would give
    args = argparse.Namespace(resume=resume)
    if crash_at is None:
        return do_train(cfg, args)
    with pytest.raises(Interrupted):
        do_train(cfg, args)


def _assert_equal(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ: {set(a) ^ set(b)}"
        for k in a:
            _assert_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{path}: max difference {(a.double() - b.double()).abs().max()}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _metric_iterations(out: Path) -> list:
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return [r["iteration"] for r in rows if "total_loss" in r]


def _check_exact_resume(make_cfg, tmp_path, losses, max_iter, crash_at, period):
    """Straight run vs a run interrupted during iteration ``crash_at`` and resumed."""
    record = losses[0]
    crashed, direct = tmp_path / "crashed", tmp_path / "straight"
    _train(make_cfg, crashed, "first", losses, crash_at=crash_at)
    last = (crash_at // period) * period - 1
    assert (crashed / "last_checkpoint").read_text() == f"model_{last:07d}.pth"
    seed = _load(crashed / f"model_{last:07d}.pth")["resume"]["seed"]
    _train(make_cfg, crashed, "resumed", losses, resume=True)
    _train(make_cfg, direct, "straight", losses, seed=seed)

    for it in range(max_iter):
        part = "first" if it <= last else "resumed"
        _assert_equal(record[part, it], record["straight", it], f"loss of iteration {it}")
    assert ("resumed", last) not in record and ("resumed", last + 1) in record
    a, b = _load(direct / "model_final.pth"), _load(crashed / "model_final.pth")
    assert a["iteration"] == b["iteration"] == max_iter - 1
    for key in set(a) - {"__author__"}:
        _assert_equal(a[key], b[key], key)
    # metrics.json: every iteration once, although the first run logged past its checkpoint.
    assert _metric_iterations(crashed) == list(range(max_iter))
    return a


# ---- classification: RandomResizedCrop, flip, RandAugment, erasing, Mixup/CutMix, drop path ----


def synthetic_records(num: int = 24, size: int = 40):
    """Classification records whose images are drawn from their index (nothing on disk)."""
    return [{"image_id": i, "label": i % 4, "size": size} for i in range(num)]


def synthetic_image(record):
    from PIL import Image

    rng = np.random.default_rng(record["image_id"])
    pixels = rng.integers(0, 256, (record["size"], record["size"], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _cls_cfg(out, seed=None):
    cfg = load_config(str(CLS_CONFIG))
    cfg.model.backbone.update(embed_dim=32, depth=2, img_size=32, drop_path_rate=0.2)
    cfg.model.num_classes = 4
    cfg.model.batch_augment.update(
        num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0, erasing_prob=0.5
    )
    cfg.dataloader.train.dataset = L(synthetic_records)()
    cfg.dataloader.train.mapper.update(
        image_size=32, auto_augment="rand-m9-mstd0.5-inc1", read_image=synthetic_image
    )
    cfg.dataloader.train.update(total_batch_size=4, num_workers=0)
    cfg.dataloader.pop("evaluator")
    cfg.train.update(
        output_dir=str(out),
        max_iter=4,
        eval_period=0,
        log_period=1,
        checkpointer=dict(period=2, max_to_keep=1),
        ema=dict(enabled=True, decay=0.9),
    )
    cfg.lr_multiplier.warmup_length = 0.25
    if seed is not None:
        cfg.train.seed = seed
    return cfg


def test_classification_resume_is_exact(tmp_path, losses):
    """No train.seed in the interrupted run: the drawn seed is saved and reused. (In-process
    runs load without workers: forked workers take seconds to shut down here; that batches do
    not depend on the workers is checked on the stream alone below.)"""
    final = _check_exact_resume(_cls_cfg, tmp_path, losses, max_iter=4, crash_at=3, period=2)
    assert not torch.equal(final["ema"]["head.fc.weight"], final["model"]["head.fc.weight"])
    # max_to_keep=1 held across the resume: the first process's model_0000001.pth is gone.
    names = sorted(p.name for p in (tmp_path / "crashed").glob("*.pth"))
    assert names == ["model_0000003.pth", "model_final.pth"]


# ---- detection (aspect-ratio grouping) and segmentation on the generated shapes -----------------


def _det_cfg(out, seed=None):
    cfg = load_config(str(DET_CONFIG))
    cfg.model.backbone.bottom_up.trunk.update(embed_dim=32, depth=2, img_size=64)
    cfg.model.backbone.bottom_up.update(interaction_indexes=[[0, 0], [1, 1]], conv_inplane=8)
    cfg.model.roi_heads.batch_size_per_image = 32
    cfg.dataloader.train.dataset.update(
        root=str(out.parent / "shapes"), prefix=f"resume_{out.parent.name}", num_train=8, num_val=0
    )
    cfg.dataloader.train.mapper.augmentations[0].update(short_edge_length=(40, 48), max_size=64)
    cfg.dataloader.train.update(total_batch_size=2, num_workers=0)
    cfg.dataloader.pop("evaluator")
    cfg.train.update(output_dir=str(out), max_iter=2, eval_period=0, log_period=1)
    cfg.train.checkpointer.update(period=1, max_to_keep=3)
    cfg.lr_multiplier.scheduler.milestones = [1]
    cfg.lr_multiplier.warmup_length = 0.5
    if seed is not None:
        cfg.train.seed = seed
    return cfg


def _seg_cfg(out, seed=None):
    cfg = load_config(str(SEG_CONFIG))
    cfg.model.backbone.update(embed_dim=32, depth=2, img_size=64, out_indices=[0, 1])
    cfg.model.decode_head.update(in_features=["layer0", "layer1"], channels=16)
    cfg.model.auxiliary_head.update(in_features=["layer1"], channels=8)
    cfg.dataloader.train.dataset.update(
        root=str(out.parent / "shapes_seg"),
        prefix=f"resume_seg_{out.parent.name}",
        num_train=6,
        num_val=1,
    )
    augs = cfg.dataloader.train.mapper.augmentations
    augs[0].img_scale = (96, 48)
    augs[1].crop_size = (48, 48)
    cfg.dataloader.train.update(total_batch_size=2, num_workers=0)
    cfg.dataloader.pop("evaluator")
    cfg.train.update(output_dir=str(out), max_iter=2, eval_period=0, log_period=1, seed=seed)
    cfg.train.checkpointer.update(period=1, max_to_keep=3)
    return cfg


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_dense_resume_is_exact(task, tmp_path, losses):
    make = _det_cfg if task == "detection" else _seg_cfg
    _check_exact_resume(make, tmp_path, losses, max_iter=2, crash_at=1, period=1)


# ---- the data stream alone ------------------------------------------------------------------


def _draws(record):
    return (record["id"], random.random(), float(np.random.rand()), float(torch.rand(())))


def _stream(mapper, records, num_workers, start, grouping=False):
    sampler = ResumableTrainingSampler(len(records), seed=5, rank=0, world_size=1)
    stream = ResumableBatchStream(records, mapper, sampler, 3, aspect_ratio_grouping=grouping)
    stream.set_start_iter(start)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers, collate_fn=lambda b: b
    )
    it = iter(loader)
    return [next(it) for _ in range(8 - start)]


@pytest.mark.parametrize("grouping", [False, True])
def test_stream_depends_on_seed_and_position_only(grouping):
    """Batch k is the same with 0 or 2 workers and when the stream starts at k (a resume)."""
    records = [{"id": i, "width": 10 + (i % 3), "height": 11} for i in range(13)]
    full = _stream(_draws, records, 0, 0, grouping)
    assert _stream(_draws, records, 2, 0, grouping) == full
    assert _stream(_draws, records, 2, 5, grouping) == full[5:]
    if grouping:  # each batch of one orientation: width 12 > height 11 or not
        assert all(len({r[0] % 3 == 2 for r in batch}) == 1 for batch in full)
    assert len({d for batch in full for r in batch for d in r[1:]}) == 3 * 8 * 3  # all differ


def test_stream_repeats_timm_augmentation():
    """RandomResizedCrop, flip and RandAugment of batch k do not depend on what ran before."""
    from plainmamba.data import ClassificationMapper

    mapper = ClassificationMapper(
        True, 32, auto_augment="rand-m9-mstd0.5-inc1", read_image=synthetic_image
    )
    records = synthetic_records(7)
    full, resumed = _stream(mapper, records, 0, 0), _stream(mapper, records, 2, 4)
    for a, b in zip(full[4:], resumed):
        assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    # The same record comes out differently on its next visit: the draws are per position.
    first = {}
    for batch in full:
        for r in batch:
            first.setdefault(r["image_id"], []).append(r["image"])
    assert any(len(v) > 1 and not torch.equal(v[0], v[1]) for v in first.values())


# ---- crash-safe files -----------------------------------------------------------------------


class _ListLogger:
    def __init__(self, warnings):
        self.warnings = warnings

    def warning(self, msg, *args):
        self.warnings.append(msg % args if args else msg)

    def info(self, msg, *args):
        pass


def _toy_checkpointer(out, value):
    model = nn.Linear(2, 1)
    nn.init.constant_(model.weight, value)
    return PlainMambaCheckpointer(model, str(out))


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    _toy_checkpointer(tmp_path, 1.0).save("model_final", iteration=3)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        _toy_checkpointer(tmp_path, 2.0).save("model_final", iteration=7)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert _load(tmp_path / "model_final.pth")["iteration"] == 3


def test_resume_falls_back_from_an_unreadable_checkpoint(tmp_path):
    for it, value in ((1, 1.0), (3, 3.0)):
        _toy_checkpointer(tmp_path, value).save(f"model_{it:07d}", iteration=it)
    os.utime(tmp_path / "model_0000001.pth", (1, 1))  # written long before the other
    data = (tmp_path / "model_0000003.pth").read_bytes()
    (tmp_path / "model_0000003.pth").write_bytes(data[: len(data) // 2])  # e.g. a disk error
    resumed = _toy_checkpointer(tmp_path, 0.0)
    warnings = []
    resumed.logger = _ListLogger(warnings)
    assert resumed.resume_or_load("", resume=True)["iteration"] == 1
    assert torch.all(resumed.model.weight == 1.0)
    assert any("resuming from" in w and "model_0000001.pth" in w for w in warnings), warnings

    (tmp_path / "model_0000001.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="delete .*last_checkpoint"):
        _toy_checkpointer(tmp_path, 0.0).resume_or_load("", resume=True)


@pytest.mark.slow
def test_kill_while_writing_the_final_checkpoint(tmp_path):
    """kill -9 halfway through model_final.pth: --resume writes it again from the checkpoint
    of the last iteration; metrics.json holds every iteration once."""
    cmd = [sys.executable, str(REPO / "tools" / "lazyconfig_train_net.py")]
    opts = ["--config-file", str(KILL_CONFIG), f"train.output_dir={tmp_path}"]
    env = dict(ENV, PLAINMAMBA_TEST_KILL_SAVING="model_final.pth")
    proc = subprocess.run(
        cmd + opts, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000007.pth"
    assert not (tmp_path / "model_final.pth").exists()

    proc = subprocess.run(
        cmd + ["--resume", *opts], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "writing it again from the checkpoint of iteration 7" in log
    final, last = _load(tmp_path / "model_final.pth"), _load(tmp_path / "model_0000007.pth")
    assert final["iteration"] == 7
    _assert_equal(final["model"], last["model"])
    _assert_equal(final["trainer"], last["trainer"])
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # leftovers removed
    # The kill came before iteration 7 was logged; nothing is logged twice.
    assert _metric_iterations(tmp_path) == list(range(7))
