"""ImageNet trainer pieces: resumable sampler, batch augmentation, evaluator, EMA, schedule, configs."""

import itertools

import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyConfig, instantiate

from helpers import REPO
from plainmamba.data import ResumableTrainingSampler
from plainmamba.engine import EMAHook
from plainmamba.evaluation import ClassificationEvaluator
from plainmamba.modeling import BatchAugment
from plainmamba.solver import epoch_schedule


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_resumes_at_any_position():
    full = take(ResumableTrainingSampler(10, seed=3, rank=0, world_size=1), 47)
    for start in (0, 1, 9, 10, 11, 23, 40):
        s = ResumableTrainingSampler(10, seed=3, rank=0, world_size=1)
        s.set_start(start)
        assert take(s, 47 - start) == full[start:]
    # Every epoch is a permutation, and consecutive epochs differ.
    epochs = [sorted(full[i : i + 10]) for i in (0, 10, 20, 30)]
    assert all(e == list(range(10)) for e in epochs)
    assert full[:10] != full[10:20]


def test_sampler_shards_ranks_without_overlap():
    shards = [ResumableTrainingSampler(11, seed=0, rank=r, world_size=3) for r in range(3)]
    assert all(s.samples_per_epoch == 4 for s in shards)
    epoch0 = [take(s, 4) for s in shards]
    seen = sorted(sum(epoch0, []))
    # 11 samples padded to 12: all samples appear, one twice.
    assert set(seen) == set(range(11)) and len(seen) == 12
    with pytest.raises(ValueError, match="rank 3 outside world size 3"):
        ResumableTrainingSampler(11, rank=3, world_size=3)
    with pytest.raises(ValueError, match="positive data set size"):
        ResumableTrainingSampler(0)


def test_batch_augment_soft_targets():
    aug = BatchAugment(
        num_classes=5, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, erasing_prob=0.0
    )
    x = torch.randn(4, 3, 8, 8)
    y, target = aug(x, torch.tensor([0, 1, 2, 4]))
    assert torch.equal(x, y)
    assert torch.allclose(target.sum(1), torch.ones(4))
    assert target[0, 0].item() == pytest.approx(0.9 + 0.02) and target[
        0, 1
    ].item() == pytest.approx(0.02)

    mix = BatchAugment(num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0, erasing_prob=1.0)
    x = torch.zeros(4, 3, 16, 16)
    y, target = mix(x, torch.tensor([0, 1, 2, 3]))
    assert target.shape == (4, 5) and torch.allclose(target.sum(1), torch.ones(4))
    assert (y != 0).any(), "erasing with probability 1 must write noise"
    with pytest.raises(ValueError, match="even number of images"):
        mix(torch.zeros(3, 3, 16, 16), torch.tensor([0, 1, 2]))


def test_classification_evaluator_topk():
    ev = ClassificationEvaluator(topk=(1, 5), distributed=False)
    ev.reset()
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5], [0.0, 5, 4, 3, 2, 1]])
    inputs = [
        {"label": 0, "image_id": "a"},
        {"label": 0, "image_id": "b"},
        {"label": 5, "image_id": "c"},
    ]
    ev.process(inputs, [{"logits": row} for row in logits])
    # A duplicate image (as from a padded shard) is counted once.
    ev.process(inputs[:1], [{"logits": logits[0]}])
    res = ev.evaluate()["classification"]
    assert res["num_images"] == 3
    assert res["top1"] == pytest.approx(100 / 3)
    assert res["top5"] == pytest.approx(200 / 3)  # image c's label 5 is its 6th guess
    small = ClassificationEvaluator(topk=(1, 2, 5), distributed=False)
    small.process([{"label": 1, "image_id": 0}], [{"logits": torch.tensor([0.0, 1.0])}])
    assert small.evaluate()["classification"] == {"top1": 100.0, "num_images": 1}
    with pytest.raises(KeyError, match="has no 'label'"):
        small.process([{"file_name": "x.png"}], [{"logits": torch.zeros(2)}])


def test_ema_hook_follows_formula_and_restores():
    model = nn.Linear(3, 2)
    hook = EMAHook(model, decay=0.9)
    hook.before_train()
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    hook.trainer = type("T", (), {"iter": 0})()
    hook.after_step()
    assert torch.allclose(hook.module.weight, 0.9 * start + 0.1 * (start + 1.0))
    assert hook.state_dict() == {}  # saved once, under "ema", not again among the hooks
    state = hook.checkpointable.state_dict()
    other = EMAHook(nn.Linear(3, 2), decay=0.9)
    other.checkpointable.load_state_dict(state)
    other.before_train()  # restored: must not be overwritten by the live weights
    assert other.restored and torch.equal(other.module.weight, hook.module.weight)
    with pytest.raises(ValueError, match="decay"):
        EMAHook(model, decay=1.0)


def test_epoch_schedule_arithmetic():
    s = epoch_schedule(epochs=300, warmup_epochs=15, num_images=1_281_167, total_batch_size=2048)
    assert s == {"iters_per_epoch": 626, "max_iter": 187_800, "warmup_iters": 9_390}
    s = epoch_schedule(epochs=300, warmup_epochs=20, num_images=1_281_167, total_batch_size=1024)
    assert s == {"iters_per_epoch": 1252, "max_iter": 375_600, "warmup_iters": 25_040}
    with pytest.raises(ValueError, match="warmup_epochs"):
        epoch_schedule(epochs=10, warmup_epochs=11, num_images=10, total_batch_size=2)


@pytest.mark.parametrize(
    "size,batch,warmup,drop_path,ema,embed,depth,amp,clip",
    [
        (1, 2048, 15, 0.2, False, 192, 24, True, 5.0),
        (2, 2048, 20, 0.2, True, 384, 24, False, 1.0),
        (3, 1024, 20, 0.4, True, 448, 36, False, 1.0),
    ],
)
def test_imagenet_configs_hold_the_released_recipe(
    size, batch, warmup, drop_path, ema, embed, depth, amp, clip
):
    cfg = LazyConfig.load(str(REPO / "configs" / "ImageNet" / f"plainmamba_l{size}_300e.py"))
    per_epoch = -(-1_281_167 // batch)
    assert cfg.dataloader.train.total_batch_size == batch
    assert cfg.train.max_iter == 300 * per_epoch and cfg.train.iters_per_epoch == per_epoch
    assert cfg.lr_multiplier.warmup_length == pytest.approx(warmup / 300)
    assert cfg.lr_multiplier.warmup_factor == 1e-3
    assert cfg.lr_multiplier.scheduler.end_value == 0.01
    assert cfg.optimizer.lr == pytest.approx(5e-4 * batch / 512)
    assert cfg.optimizer.weight_decay == 0.05 and cfg.optimizer.eps == 1e-8
    assert cfg.train.clip_grad.max_norm == clip and cfg.train.ema.enabled is ema
    assert cfg.train.amp.enabled is amp  # L2 and L3: float32 (EpochBasedRunner), as released
    assert cfg.train.ema.kind == "released" and cfg.train.ema.momentum == 1e-4
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert (cfg.model.backbone.embed_dim, cfg.model.backbone.depth) == (embed, depth)
    aug = cfg.model.batch_augment
    assert (aug.mixup_alpha, aug.cutmix_alpha, aug.switch_prob) == (0.8, 1.0, 0.5)
    assert (aug.label_smoothing, aug.erasing_prob) == (0.1, 0.25)
    mapper = instantiate(cfg.dataloader.train.mapper)
    names = [type(t).__name__ for t in mapper.transform.transforms[0].transforms]
    assert names[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    ra = mapper.transform.transforms[1].transforms[0]
    assert type(ra).__name__ == "RandAugment" and ra.num_layers == 2
    assert ra.ops[0].magnitude == 9 and ra.ops[0].magnitude_std == 0.5
    assert "PosterizeIncreasing" in [op.name for op in ra.ops]  # "inc1": increasing policies
    assert cfg.dataloader.test.mapper.crop_pct == pytest.approx(224 / 256)


@pytest.mark.slow
def test_imagenet_l1_recipe_runs_a_training_step(tmp_path):
    """The released pipeline end to end on generated images: LMDB records, RandAugment crop at
    224, Mixup/CutMix and erasing on the batch, L1 with drop path, soft-target loss, backward."""
    from plainmamba.data import register_shapes_classification

    cfg = LazyConfig.load(str(REPO / "configs" / "ImageNet" / "plainmamba_l1_300e.py"))
    # Its own names and root: registrations are process-wide and must not clash.
    register_shapes_classification(tmp_path / "shapes_cls", prefix="recipe_shapes")
    cfg.dataloader.train.dataset.names = "recipe_shapes_lmdb_val"
    cfg.dataloader.train.total_batch_size = 4
    cfg.dataloader.train.num_workers = 0
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert [tuple(b["image"].shape) for b in batch] == [(3, 224, 224)] * 4
    model = instantiate(cfg.model).train()
    assert model.batch_augment.mixup is not None and model.backbone.drop_path_rate == 0.2
    loss = model(batch)["loss_cls"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.backbone.layers[0].mamba.in_proj.weight.grad.abs().sum() > 0
