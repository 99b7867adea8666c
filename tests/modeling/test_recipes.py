"""The training recipes follow the released ones point by point (docs/recipes.md).

Weight decay and lr of every parameter against hand-written tables of the released decisions
(MMCV's paramwise_cfg on the released names), the released initialisation, SyncBN everywhere in
the detectors, 512 x 512 training crops for ADE20K, MMCV's warm-up, MMDetection's matcher and
RetinaNet normaliser, the schedules, and the released EMA (momentum, parameters only, swapped in
at epoch ends, exactly resumable). L1 models are built once per task.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn
from helpers import REPO
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from plainmamba.engine.ema_released import ReleasedEMAHook
from plainmamba.modeling import ImageClassifier, MaxIoUMatcher
from plainmamba.solver import released_param_decisions

CONFIGS = REPO / "configs"
IMAGENET = {s: CONFIGS / "ImageNet" / f"plainmamba_{s}_300e.py" for s in ("l1", "l2", "l3")}
COCO = {
    (k, s): CONFIGS / "COCO" / f"{k}_plainmamba_adapter_{s}_1x.py"
    for k in ("mask_rcnn", "retinanet")
    for s in ("l1", "l2", "l3")
}
ADE = {s: CONFIGS / "ADE20K" / f"upernet_plainmamba_{s}_160k.py" for s in ("l1", "l2", "l3")}


@pytest.fixture(scope="module")
def built():
    """name -> (config, model, {parameter name: (lr, weight decay)}) for the four L1 recipes."""
    out = {}
    for name, path in [
        ("imagenet", IMAGENET["l1"]),
        ("mask_rcnn", COCO["mask_rcnn", "l1"]),
        ("retinanet", COCO["retinanet", "l1"]),
        ("ade20k", ADE["l1"]),
    ]:
        cfg = LazyConfig.load(str(path))
        model = instantiate(cfg.model)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        ids = {id(p): n for n, p in model.named_parameters()}
        groups = {
            ids[id(p)]: (g["lr"], g["weight_decay"])
            for g in optimizer.param_groups
            for p in g["params"]
        }
        out[name] = (cfg, model, groups)
    return out


# --- weight decay and lr per parameter ------------------------------------------------------
# (regex on our name, weight-decay multiplier): the first match decides, every parameter must
# match and every row must be used. Written from the released files, not from the code.

IMAGENET_TABLE = [  # norm_decay_mult=0, bias_decay_mult=0, keys .pos_embed .A_log .D ...
    (r"^backbone\.pos_embed$", 0.0),
    (r"\.mamba\.(A_log|D|direction_Bs)$", 0.0),
    (r"\.mamba\.conv2d\.(weight|bias)$", 1.0),  # depthwise: dwconv_decay_mult (1) before bias
    (r"^backbone\.layers\.0\.dw\.0\.weight$", 1.0),  # depthwise too
    (r"^backbone\.layers\.\d+\.norm\.(weight|bias)$", 0.0),
    (r"^backbone\.ln1\.(weight|bias)$", 0.0),
    (r"^backbone\.patch_embed\.(stem|convs)\.1\.(weight|bias)$", 0.0),  # BatchNorm
    (r"^backbone\.layers\.0\.dw\.1\.(weight|bias)$", 0.0),  # BatchNorm
    (r"\.bias$", 0.0),
    (r"\.weight$", 1.0),
]

_DET_COMMON = [  # keys: level_embed pos_embed norm bias .A_log .D .direction_Bs, nothing else
    (r"^backbone\.bottom_up\.level_embed$", 0.0),
    (r"^backbone\.bottom_up\.trunk\.pos_embed$", 0.0),
    (r"\.mamba\.(A_log|D|direction_Bs)$", 0.0),
    (r"\.bias$", 0.0),
    (r"^backbone\.bottom_up\.trunk\.layers\.\d+\.norm\.weight$", 0.0),
    (r"\.(query_norm|feat_norm|ffn_norm)\.weight$", 0.0),
    (r"^backbone\.bottom_up\.ad_norm[1-4]\.weight$", 0.0),
    # BatchNorm weights whose released names lack "norm" are decayed:
    (r"^backbone\.bottom_up\.trunk\.patch_embed\.(stem|convs)\.1\.weight$", 1.0),
    (r"^backbone\.bottom_up\.trunk\.layers\.0\.dw\.1\.weight$", 1.0),
    (r"^backbone\.bottom_up\.spm\.(stem\.[147]|conv[234]\.1)\.weight$", 1.0),
    (r"^backbone\.fpn_(lateral|output)\d\.norm\.weight$", 1.0),  # released neck.*.bn.weight
    (r"^backbone\.bottom_up\.interactions\.\d+\.injector\.gamma$", 1.0),
]
MASK_RCNN_TABLE = _DET_COMMON + [
    (r"^roi_heads\.box_head\.conv\d\.norm\.weight$", 1.0),  # shared_convs.k.bn.weight
    (r"\.weight$", 1.0),
]
RETINANET_TABLE = _DET_COMMON + [
    (r"^backbone\.top_block\.p[67]\.norm\.weight$", 1.0),  # neck.fpn_convs.{3,4}.bn.weight
    (r"\.weight$", 1.0),
]

ADE20K_TABLE = [  # keys: norm .pos_embed .A_log .D .direction_Bs (+ Swin's); biases decayed
    (r"^backbone\.pos_embed$", 0.0),
    (r"\.mamba\.(A_log|D|direction_Bs)$", 0.0),
    (r"^backbone\.layers\.\d+\.norm\.(weight|bias)$", 0.0),
    (r"^backbone\.norm_layer\d+\.(weight|bias)$", 0.0),
    (r"^backbone\.ln1\.(weight|bias)$", 1.0),  # no "norm" in "ln1"
    (r"\.bn\.(weight|bias)$", 1.0),
    (r"^backbone\.patch_embed\.(stem|convs)\.1\.(weight|bias)$", 1.0),
    (r"^backbone\.layers\.0\.dw\.1\.(weight|bias)$", 1.0),
    (r"\.bias$", 1.0),
    (r"\.weight$", 1.0),
]


@pytest.mark.parametrize(
    "name, table, base_wd",
    [
        ("imagenet", IMAGENET_TABLE, 0.05),
        ("mask_rcnn", MASK_RCNN_TABLE, 0.05),
        ("retinanet", RETINANET_TABLE, 0.05),
        ("ade20k", ADE20K_TABLE, 0.01),
    ],
)
def test_weight_decay_and_lr_of_every_parameter(built, name, table, base_wd):
    cfg, model, groups = built[name]
    assert cfg.optimizer.weight_decay == base_wd
    used = set()
    for param, (lr, wd) in groups.items():
        row = next((i for i, (pattern, _) in enumerate(table) if re.search(pattern, param)), None)
        assert row is not None, f"{name}: {param} is in no row of the table"
        used.add(row)
        assert wd == pytest.approx(base_wd * table[row][1]), f"{name}: {param} ({table[row][0]})"
        assert lr == cfg.optimizer.lr, f"{name}: {param} has lr {lr}"  # no lr multipliers
    assert used == set(range(len(table))), f"{name}: unused rows {set(range(len(table))) - used}"
    assert len(groups) == sum(p.requires_grad for p in model.parameters())


def test_decisions_read_the_released_names(built):
    decisions = {d.name: d for d in released_param_decisions(built["mask_rcnn"][1], "coco")}
    fpn = decisions["backbone.fpn_lateral2.norm.weight"]
    assert fpn.released_name == "neck.lateral_convs.0.bn.weight" and fpn.decay_mult == 1.0
    stem = decisions["backbone.bottom_up.trunk.patch_embed.stem.1.weight"]
    assert stem.released_name == "backbone.patch_embed.stem.1.weight"
    box = decisions["roi_heads.box_head.conv1.norm.weight"]
    assert box.released_name == "roi_head.bbox_head.shared_convs.0.bn.weight"
    retina = {d.name: d for d in released_param_decisions(built["retinanet"][1], "coco")}
    assert retina["backbone.top_block.p7.norm.weight"].released_name == (
        "neck.fpn_convs.4.bn.weight"
    )


def test_print_param_groups_tool(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ppg", REPO / "tools" / "print_param_groups.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ["--config-file", str(IMAGENET["l1"]), "--params"]
    argv += ["--opts", "model.backbone.depth=2"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert "optimizer AdamW: lr 0.002, weight_decay 0.05" in out
    rows = [line.split() for line in out.splitlines()[2:4]]
    assert sorted(r[1:3] for r in rows) == [["0.002", "0"], ["0.002", "0.05"]]
    assert "backbone.layers.1.mamba.conv2d.bias  <- backbone.layers.1.mamba.conv2d.bias" in out
    assert "(dwconv_decay_mult=1)" in out and "(key '.A_log')" in out


# --- initialisation ---------------------------------------------------------------------------


def test_released_classifier_initialisation(built):
    cfg, model, _ = built["imagenet"]
    assert all(LazyConfig.load(str(p)).model.init == "released" for p in IMAGENET.values())
    layers = model.backbone.layers
    for layer in layers:
        assert torch.count_nonzero(layer.mamba.dt_proj.bias) == 0  # softplus(0) for delta
        assert torch.all(layer.norm.weight == 1) and torch.all(layer.norm.bias == 0)
    for attr, std in [("in_proj", 0.02), ("x_proj", 0.02), ("out_proj", 0.02), ("dt_proj", 0.02)]:
        w = torch.cat([getattr(layer.mamba, attr).weight.flatten() for layer in layers])
        assert w.std().item() == pytest.approx(std, rel=0.05), attr
        assert w.mean().abs().item() < 2e-3, attr
    assert all(torch.count_nonzero(layer.mamba.in_proj.bias) == 0 for layer in layers)
    assert model.backbone.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.head.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(model.head.fc.bias) == 0
    # What the released code leaves alone: S4D A, D = 1, direction_Bs ~ TN(0.02), default convs.
    mixer = layers[3].mamba
    assert torch.allclose(mixer.A_log[0], torch.log(torch.arange(1.0, 17.0)))
    assert torch.all(mixer.D == 1)
    bs = torch.cat([layer.mamba.direction_Bs.flatten() for layer in layers])
    assert bs.std().item() == pytest.approx(0.02, rel=0.15)
    stem = model.backbone.patch_embed.stem[0].weight
    bound = 1 / math.sqrt(stem[0].numel())  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), ..)
    assert stem.abs().max().item() <= bound and stem.std().item() > 0.5 * bound / math.sqrt(3)


def test_mamba_initialisation_is_an_option():
    cfg = LazyConfig.load(str(IMAGENET["l1"]))
    cfg.model.backbone.depth = 2
    released = instantiate(cfg.model)
    cfg.model.init = "mamba"
    model = instantiate(cfg.model)
    delta = torch.nn.functional.softplus(model.backbone.layers[0].mamba.dt_proj.bias)
    assert delta.min() >= 1e-4 * 0.999 and delta.max() <= 0.1 * 1.001  # [dt_min, dt_max]
    assert model.head.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # The same names and shapes either way: checkpoints load into both.
    shapes = {k: v.shape for k, v in released.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    with pytest.raises(ValueError, match="init"):
        ImageClassifier(backbone=model.backbone, num_classes=3, init="xavier")


def test_detector_heads_start_as_mmdetection(built):
    model = built["mask_rcnn"][1]
    conv = model.backbone.fpn_output2.weight  # Xavier uniform, fan_in = fan_out = 2304
    assert conv.abs().max().item() <= math.sqrt(6 / (2 * 2304)) * 1.0001
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (2 * 2304)), rel=0.05)
    fc = model.roi_heads.box_head.fc1.weight  # Xavier uniform (12544 -> 1024)
    assert fc.abs().max().item() <= math.sqrt(6 / (12544 + 1024)) * 1.0001
    assert fc.std().item() == pytest.approx(math.sqrt(2 / (12544 + 1024)), rel=0.05)
    logits = model.roi_heads.mask_head.predictor.weight  # Kaiming normal, fan_out = 80
    assert logits.std().item() == pytest.approx(math.sqrt(2 / 80), rel=0.05)
    p6 = built["retinanet"][1].backbone.top_block.p6.weight
    assert p6.abs().max().item() <= math.sqrt(6 / (2 * 2304)) * 1.0001


# --- SyncBN, padding, schedules -----------------------------------------------------------------


def test_every_batch_norm_of_the_detectors_is_synchronised(built):
    for name in ("mask_rcnn", "retinanet"):
        model = built[name][1]
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms and all(type(m) is nn.SyncBatchNorm for m in norms), name
        trunk = model.backbone.bottom_up.trunk
        assert type(trunk.patch_embed.stem[1]) is nn.SyncBatchNorm
        assert type(trunk.layers[0].dw[1]) is nn.SyncBatchNorm  # L1's layer-0 dwconv block
    for (kind, _), path in COCO.items():
        model = LazyConfig.load(str(path)).model
        assert model.backbone.norm == "SyncBN"
        assert model.backbone.bottom_up.norm == model.backbone.bottom_up.trunk_norm == "SyncBN"
        if kind == "mask_rcnn":
            assert model.roi_heads.box_head.conv_norm == "SyncBN"


def test_ade20k_training_crops_pad_to_512(built):
    assert all(LazyConfig.load(str(p)).model.train_pad_size == [512, 512] for p in ADE.values())
    model = built["ade20k"][1]
    batch = [
        {"image": torch.full((3, 300, 400), 200, dtype=torch.uint8)},
        {"image": torch.full((3, 512, 200), 200, dtype=torch.uint8)},
    ]
    for record, (h, w) in zip(batch, [(300, 400), (512, 200)]):
        record["sem_seg"] = torch.ones(h, w, dtype=torch.long)
    model.train()
    images = model.preprocess_image(batch)
    targets = model.preprocess_targets(batch, images)
    assert images.tensor.shape == (2, 3, 512, 512) and targets.shape == (2, 512, 512)
    assert images.image_sizes == [(300, 400), (512, 200)]
    assert torch.all(images.tensor[0, :, 300:] == 0)
    assert torch.all(images.tensor[0, :, :, 400:] == 0)
    assert torch.all(targets[0, 300:] == 255) and torch.all(targets[0, :, 400:] == 255)
    assert torch.all(targets[0, :300, :400] == 1) and torch.all(targets[1, :, :200] == 1)
    model.eval()
    assert model.preprocess_image(batch[:1]).tensor.shape[-2:] == (320, 416)  # test: no pad


def test_schedules_follow_the_released_epochs():
    retina = LazyConfig.load(str(COCO["retinanet", "l1"]))
    mask = LazyConfig.load(str(COCO["mask_rcnn", "l1"]))
    assert retina.train.max_iter == 12 * 7330
    assert retina.lr_multiplier.scheduler.milestones == [8 * 7330, 11 * 7330]
    assert mask.train.max_iter == 12 * 7393 and mask.dataloader.train.dataset.filter_empty is False
    assert retina.dataloader.train.dataset.filter_empty is True
    l1, l2, l3 = (LazyConfig.load(str(IMAGENET[s])) for s in ("l1", "l2", "l3"))
    assert l1.train.amp.enabled and l1.train.clip_grad.max_norm == 5.0
    assert not l1.train.ema.enabled
    for cfg in (l2, l3):
        assert not cfg.train.amp.enabled and cfg.train.clip_grad.max_norm == 1.0
        assert cfg.train.ema.enabled and cfg.train.ema.kind == "released"
    assert l3.train.checkpointer.period == l3.train.eval_period == 5 * 1252
    assert l3.optimizer.lr == pytest.approx(1e-3) and l1.optimizer.lr == pytest.approx(2e-3)


def test_mmcv_warmup_scales_the_schedule():
    cfg = LazyConfig.load(str(IMAGENET["l1"]))
    sched = instantiate(cfg.lr_multiplier)
    n, w = cfg.train.max_iter, 15 * 626
    for i in (0, 1000, w - 1, w, n - 1):
        cosine = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * i / n))
        ramp = 1 - (1 - i / w) * (1 - 1e-3) if i < w else 1.0
        assert sched(i / n) == pytest.approx(cosine * ramp, rel=1e-9), i
    ade = instantiate(LazyConfig.load(str(ADE["l1"])).lr_multiplier)
    i = 750
    assert ade(i / 160000) == pytest.approx((1 - i / 160000) * (1e-6 + (1 - 1e-6) * i / 1500))


# --- MMDetection's matcher and RetinaNet normaliser ------------------------------------------


def test_low_quality_matches_need_min_iou():
    iou = torch.tensor(
        [
            [0.25, 0.10, 0.0, 0.0],  # best 0.25 < 0.3: no low-quality match (Detectron2 has one)
            [0.0, 0.35, 0.35, 0.2],  # best 0.35: both tied predictions become positive
            [0.0, 0.35, 0.1, 0.0],  # also best at prediction 1: the later ground truth wins it
        ]
    )
    matcher = MaxIoUMatcher(
        [0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True, min_low_quality=0.3
    )
    matches, labels = matcher(iou)
    assert labels.tolist() == [0, 1, 1, 0]
    assert matches[1].item() == 2 and matches[2].item() == 1


def test_retinanet_normalises_by_this_batch(built):
    model = built["retinanet"][1]
    k = model.num_classes
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 30, 30]]))]
    gt_labels = [torch.tensor([3, k, -1]), torch.tensor([k, k, k])]  # 1 and 0 positives
    gt_boxes = [torch.tensor([[0.0, 0, 10, 10]] * 3)] * 2
    logits = [torch.randn(2, 3, k)]
    deltas = [torch.randn(2, 3, 4)]
    with EventStorage(0):
        model.loss_normalizer_mode = "mmdet"
        mmdet = model.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        model.loss_normalizer_mode = "detectron2"
        d2 = model.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        model.loss_normalizer_mode = "mmdet"
    # MMDetection: max(1, 1) + max(0, 1) = 2; Detectron2: 0.9 * 100 + 0.1 * max(1, 1) = 90.1.
    for key in ("loss_cls", "loss_box_reg"):
        assert (mmdet[key] * 2).item() == pytest.approx((d2[key] * 90.1).item(), rel=1e-5)


# --- the released EMA ---------------------------------------------------------------------------


class _Trainer:
    iter = 0


def test_released_ema_schedule_parameters_only_and_swaps():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    hook = ReleasedEMAHook(model, iters_per_epoch=3, momentum=1e-4, decay_epochs=[2])
    assert hook.momentum_at(0) == pytest.approx(1e-4)  # the "warm-up" min() never binds
    assert hook.momentum_at(5) == pytest.approx(1e-4) and hook.momentum_at(6) == 1e-3
    hook = ReleasedEMAHook(model, iters_per_epoch=3, momentum=0.5, warm_up=1, decay_epochs=[])
    hook.trainer = _Trainer()
    hook.before_train()
    start = [p.detach().clone() for p in model.parameters()]
    expected = [p.clone() for p in start]
    for it in range(3):
        hook.trainer.iter = it
        hook.before_step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
            model[1].running_mean.add_(1.0)
        live = [p.detach().clone() for p in model.parameters()]
        expected = [0.5 * e + 0.5 * p for e, p in zip(expected, live)]
        hook.after_step()
    # End of the epoch: the model holds the average, the live weights wait in the shadow.
    assert hook.swapped
    for p, e, s, w in zip(model.parameters(), expected, hook.shadow, live):
        assert torch.allclose(p, e) and torch.equal(s, w)
    assert torch.equal(model[1].running_mean, torch.full((2,), 3.0))  # buffers: not averaged
    hook.trainer.iter = 3
    hook.before_step()  # next epoch trains the live weights again
    assert not hook.swapped and all(torch.equal(p, w) for p, w in zip(model.parameters(), live))


class _ToyLoss(nn.Module):
    """A model with a BatchNorm whose forward returns a loss dict, as trainers expect."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, batch):
        x, y = batch
        return {"loss": ((self.net(x).squeeze(1) - y) ** 2).mean()}


def _train_toy(out, max_iter, resume):
    from detectron2.engine import SimpleTrainer, hooks
    from fvcore.common.checkpoint import Checkpointer

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = _ToyLoss()
    batch = (torch.randn(16, 4), torch.randn(16))

    def stream():
        while True:
            yield batch

    trainer = SimpleTrainer(model, stream(), torch.optim.AdamW(model.parameters(), lr=0.05))
    ema = ReleasedEMAHook(model, iters_per_epoch=3, momentum=0.3, warm_up=1, decay_epochs=[2])
    checkpointer = Checkpointer(model, str(out), trainer=trainer)
    checkpointer.add_checkpointable("ema", ema.checkpointable)
    trainer.register_hooks([ema, hooks.PeriodicCheckpointer(checkpointer, 3, max_iter=max_iter)])
    start = 0
    if resume:
        checkpointer.resume_or_load("", resume=True)
        start = trainer.iter + 1
    trainer.train(start, max_iter)
    return model, ema


def test_released_ema_resumes_exactly(tmp_path):
    straight_model, straight = _train_toy(tmp_path / "straight", 9, resume=False)
    _train_toy(tmp_path / "split", 6, resume=False)  # ends at an epoch's end: swapped in
    saved = torch.load(tmp_path / "split" / "model_final.pth", weights_only=False)
    assert saved["ema"]["swapped"] is True and saved["iteration"] == 5
    weight = saved["ema"]["shadow"]["net.0.weight"]
    assert not torch.equal(weight, saved["model"]["net.0.weight"])  # the model is the average
    resumed_model, resumed = _train_toy(tmp_path / "split", 9, resume=True)
    assert straight.swapped and resumed.swapped  # 9 iterations end an epoch: average in model
    for (name, a), b in zip(
        straight_model.state_dict().items(), resumed_model.state_dict().values()
    ):
        assert torch.equal(a, b), name
    for a, b in zip(straight.shadow, resumed.shadow):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="released-EMA"):
        resumed.checkpointable.load_state_dict({"net.0.weight": weight})
