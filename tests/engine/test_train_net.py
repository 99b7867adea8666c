"""tools/lazyconfig_train_net.py and plainmamba.engine on the toy regression config (CPU only)."""

import copy
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import REPO

SCRIPT = REPO / "tools" / "lazyconfig_train_net.py"
CONFIG = REPO / "tests" / "configs" / "toy_regression.py"
MAX_ITER = 60  # toy config's train.max_iter
NUM_TEST = 50  # toy config's test-set size
# Hide GPUs so the CPU/GLOO paths run everywhere (and --num-gpus 2 needs no 2 GPUs).
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")


def _command(*args: str) -> list:
    return [sys.executable, str(SCRIPT), "--config-file", str(CONFIG), *args]


def run_net(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"


def read_metrics(out: Path) -> list:
    rows = []
    for line in (out / "metrics.json").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by SIGKILL
            pass
    return [r for r in rows if "total_loss" in r]


def read_results(out: Path) -> dict:
    return json.loads((out / "inference" / "regression_results.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One single-process run (with gradient clipping on), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("single")
    proc = run_net(f"train.output_dir={out}", "train.clip_grad.enabled=True")
    _check(proc)
    return out, proc


@pytest.mark.slow
def test_single_process_training(trained):
    out, proc = trained
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows][-1] == MAX_ITER - 1
    assert rows[-1]["total_loss"] < 0.2 * rows[0]["total_loss"], rows
    assert all("grad_norm" in r for r in rows)  # clip_grad logs the norm it clipped

    for name in ("model_0000019.pth", "model_0000039.pth", "model_final.pth"):
        assert (out / name).is_file(), name
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == MAX_ITER - 1
    assert {"optimizer", "hooks"} <= set(final["trainer"])

    assert "copypaste: Task: regression" in proc.stdout
    results = read_results(out)  # written under train.output_dir/inference by default
    assert results["num_samples"] == NUM_TEST and results["mse"] < 0.1
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard event file"


@pytest.mark.slow
def test_eval_only(trained, tmp_path):
    out, _ = trained
    proc = run_net(
        "--eval-only",
        f"train.init_checkpoint={out / 'model_final.pth'}",
        f"train.output_dir={tmp_path}",
    )
    _check(proc)
    assert "copypaste: Task: regression" in proc.stdout
    printed = re.search(r"\{'regression': \{'mse': ([0-9.e+-]+)", proc.stdout)
    assert printed, proc.stdout[-2000:]
    # Same weights, same test set: the same number as the end of training.
    assert float(printed.group(1)) == pytest.approx(read_results(out)["mse"], rel=1e-6)


@pytest.mark.slow
def test_two_processes_on_cpu(tmp_path):
    proc = run_net("--num-gpus", "2", "--dist-url", "auto", f"train.output_dir={tmp_path}")
    _check(proc)
    assert "World size: 2" in proc.stdout
    assert (tmp_path / "log.txt.rank1").is_file()  # rank 1 ran main() too
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (tmp_path / "model_final.pth").is_file()
    results = read_results(tmp_path)
    # Each rank sees half of the test set; the main one reports the gathered whole.
    assert results["num_ranks"] == 2 and results["num_samples"] == NUM_TEST
    rows = read_metrics(tmp_path)
    assert rows[-1]["iteration"] == MAX_ITER - 1
    assert rows[-1]["total_loss"] < 0.2 * rows[0]["total_loss"]


@pytest.mark.slow
def test_launched_main_destroys_the_process_group(tmp_path):
    """A launched worker tears its process groups down after training (a Gloo group left to the
    interpreter's exit can abort the rank after its work is done)."""
    script = f"""
import torch.distributed as dist
from plainmamba.engine import default_train_argument_parser, launched_main
dist.init_process_group("gloo", init_method="file://{tmp_path}/pg", world_size=1, rank=0)
args = default_train_argument_parser().parse_args(
    ["--config-file", "{CONFIG}", "train.output_dir={tmp_path}/out", "train.max_iter=3"]
)
launched_main(args)
print("initialized after main:", dist.is_initialized())
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    _check(proc)
    assert "initialized after main: False" in proc.stdout
    assert (tmp_path / "out" / "model_final.pth").is_file()


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
    # 50 ms per step stretches the 60 steps to 3 s, long enough to catch a mid-run checkpoint.
    args = [f"train.output_dir={tmp_path}", "train.checkpointer.period=10", "model.step_delay=0.05"]
    tag = tmp_path / "last_checkpoint"
    pattern = re.compile(r"model_(\d{7})\.pth")
    with open(tmp_path / "first_run.log", "w") as log:
        proc = subprocess.Popen(
            _command(*args), cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the kill takes every child
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not (tag.is_file() and pattern.fullmatch(tag.read_text().strip())):
                assert proc.poll() is None, "run ended before a mid-run checkpoint was seen"
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_at = int(pattern.fullmatch(tag.read_text().strip()).group(1))
    assert killed_at < MAX_ITER - 1
    seen_rows = len(read_metrics(tmp_path))

    proc = run_net("--resume", *args)
    _check(proc)
    assert f"Starting training from iteration {killed_at + 1}" in proc.stdout
    assert "Starting training from iteration 0" not in proc.stdout
    new_rows = read_metrics(tmp_path)[seen_rows:]
    assert new_rows and min(r["iteration"] for r in new_rows) > killed_at
    assert new_rows[-1]["iteration"] == MAX_ITER - 1
    assert tag.read_text().strip() == "model_final.pth"


@pytest.mark.slow
def test_missing_config_file(tmp_path):
    missing = tmp_path / "no_such_config.py"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--config-file", str(missing)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert str(missing) in proc.stderr


@pytest.mark.slow
def test_unknown_override_key():
    proc = run_net("train.max_iterr=5", timeout=120)
    assert proc.returncode != 0
    assert "train.max_iterr" in proc.stderr and str(CONFIG) in proc.stderr
    assert "did you mean 'train.max_iter'" in proc.stderr


# ---- in-process unit tests -----------------------------------------------------------------


def test_override_validation():
    from plainmamba.engine import ConfigError, load_config

    cfg = load_config(str(CONFIG), ["train.max_iter=7", "optimizer.amsgrad=True", "+train.x=1"])
    assert cfg.train.max_iter == 7  # existing key
    assert cfg.optimizer.amsgrad is True  # an AdamW argument the LazyCall left at its default
    assert cfg.train.x == 1  # '+' adds a key
    with pytest.raises(ConfigError, match=r"model\.bogus.*ToyRegressor takes no argument"):
        load_config(str(CONFIG), ["model.bogus=1"])
    with pytest.raises(ConfigError, match=r"there is no 'nothere'"):
        load_config(str(CONFIG), ["nothere.x=1"])
    with pytest.raises(ConfigError, match="cannot parse override 'train.max_iter'"):
        load_config(str(CONFIG), ["train.max_iter"])


def _check_args(*argv: str):
    from plainmamba.engine import check_args, default_train_argument_parser

    parser = default_train_argument_parser()
    return check_args(parser.parse_args(["--config-file", str(CONFIG), *argv]))


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["train.max_iter=abc"],
            r"train\.max_iter must be an int \(it replaces 60\), got 'abc' \(a str\)",
        ),
        (
            ["train.max_iter=1.5"],
            r"train\.max_iter must be an int \(it replaces 60\), got 1\.5 \(a float\)",
        ),
        (
            ["optimizer.lr=fast"],
            r"optimizer\.lr must be a number \(it replaces 0\.1\), got 'fast' \(a str\)",
        ),
        # an argument the LazyCall leaves at its default: the default's type
        (["optimizer.amsgrad=yes"], r"optimizer\.amsgrad must be a bool .*it replaces False"),
        (["train.max_iter=1,2"], r"'train\.max_iter=1,2': a comma-separated value is a sweep"),
        (["train.device=gpu0"], r"train\.device='gpu0' in config .*'cpu', 'cuda' or 'cuda:N'"),
        (["train.max_iter=0"], r"train\.max_iter=0 in config .*: must be a positive int"),
        (["train.log_period=0"], r"train\.log_period=0 in config .*: must be a positive int"),
        (["train.checkpointer.period=0"], r"train\.checkpointer\.period=0 .*positive int"),
        (["train.eval_period=-1"], r"train\.eval_period=-1 .*>= 0 \(0 turns evaluation off\)"),
        (["dataloader.train.batch_size=0"], r"dataloader\.train\.batch_size=0 .*positive int"),
        (["dataloader.test.batch_size=0"], r"dataloader\.test\.batch_size=0 .*positive int"),
        (
            ["--num-gpus", "2", "+dataloader.train.total_batch_size=3"],
            r"total_batch_size=3 in config .* cannot be split evenly over 2 processes "
            r"\(--num-gpus 2 x --num-machines 1\): use a multiple of 2",
        ),
        (
            ["lr_multiplier.scheduler.num_updates=${train.max_iter}", "train.max_iter=50"],
            r"lr_multiplier\.scheduler\.milestones=\[80\] must be smaller than "
            r"lr_multiplier\.scheduler\.num_updates=50 \(from \$\{train\.max_iter\}\)",
        ),
        (["lr_multiplier.warmup_length=2.0"], r"lr_multiplier of config .* cannot be built"),
    ],
    ids=[
        "max_iter-str",
        "max_iter-float",
        "lr-str",
        "default-bool",
        "sweep",
        "device",
        "max_iter-0",
        "log_period-0",
        "checkpoint_period-0",
        "eval_period-negative",
        "batch_size-0",
        "test_batch_size-0",
        "total_batch_size-split",
        "milestone-past-end",
        "schedule-unbuildable",
    ],
)
def test_config_is_checked_before_launching(argv, match):
    """Mistakes that failed only in the launched processes, with tracebacks naming no key."""
    from plainmamba.engine import ConfigError

    with pytest.raises(ConfigError, match=match):
        _check_args(*argv)


def test_config_checks_accept_valid_overrides():
    cfg = _check_args(
        "--num-gpus",
        "2",
        "optimizer.lr=1",  # an int for a float
        "train.eval_period=${train.max_iter}",  # an interpolation, resolved later
        "train.device=cuda:0",  # falls back to the CPU where there is no GPU
        "+dataloader.train.total_batch_size=4",
    )
    assert cfg.optimizer.lr == 1 and cfg.train.eval_period == MAX_ITER
    assert _check_args("--eval-only", "train.max_iter=0").train.max_iter == 0  # not trained


def test_amp_on_cpu_falls_back_to_float32():
    from detectron2.engine import AMPTrainer, SimpleTrainer

    from plainmamba.engine import build_trainer, load_config, resolve_device

    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert resolve_device("cuda") == "cpu"
    cfg = load_config(str(CONFIG), ["train.amp.enabled=True", "+train.amp.precision=bfloat16"])
    model = nn.Linear(2, 1)
    trainer = build_trainer(cfg, model, iter([]), torch.optim.SGD(model.parameters(), lr=0.1))
    assert type(trainer) is SimpleTrainer and not isinstance(trainer, AMPTrainer)


def _loss(model: nn.Module) -> torch.Tensor:
    x = torch.linspace(-3, 3, 40).reshape(10, 4)
    return 100 * model(x).pow(2).sum()  # large gradients, so clipping has work to do


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_full_model_grad_clipping(norm_type):
    from plainmamba.engine import add_full_model_grad_clipping

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    add_full_model_grad_clipping(opt, max_norm=0.5, norm_type=norm_type)
    add_full_model_grad_clipping(opt, max_norm=0.5, norm_type=norm_type)  # replaces, not stacks
    assert isinstance(opt, torch.optim.SGD) and type(opt).__mro__[1] is torch.optim.SGD
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)

    def step_both():
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            _loss(m).backward()
        before = nn.utils.clip_grad_norm_(reference.parameters(), 0.5, norm_type)
        assert before > 0.5  # the clip is not a no-op
        ref_opt.step()
        opt.step()
        clipped = torch.stack([p.grad.norm(norm_type) for p in model.parameters()])
        assert float(clipped.norm(norm_type)) == pytest.approx(0.5, rel=1e-4)
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q)

    step_both()
    step_both()

    # state_dict round-trip through a file, into a fresh clipped optimizer.
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored_model = copy.deepcopy(model)
    restored = add_full_model_grad_clipping(
        torch.optim.SGD(restored_model.parameters(), lr=0.01, momentum=0.9), 0.5, norm_type
    )
    restored.load_state_dict(state)
    for key, value in opt.state_dict()["state"].items():
        torch.testing.assert_close(restored.state_dict()["state"][key], value)
    assert restored.state_dict()["param_groups"] == opt.state_dict()["param_groups"]

    # load_state_dict re-patches step() in torch: clipping must survive, hooks must run once.
    calls = []
    restored.register_step_post_hook(lambda *_: calls.append(1))
    model, opt = restored_model, restored
    step_both()
    assert calls == [1]


@pytest.mark.parametrize("fused", [False, True])
def test_grad_clipping_sees_unscaled_amp_gradients(fused):
    from plainmamba.engine import add_full_model_grad_clipping

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reference = copy.deepcopy(model)
    if fused:  # fused optimizers unscale inside step(), after the clipping would have run
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.01)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)
    add_full_model_grad_clipping(opt, max_norm=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(_loss(model)).backward()
        scaler.step(opt)
        scaler.update()
        ref_opt.zero_grad()
        _loss(reference).backward()
        nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        ref_opt.step()
        norm = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
        assert float(norm) == pytest.approx(0.5, rel=1e-4)
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q)
