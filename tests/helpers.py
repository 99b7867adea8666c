"""Shared test helpers: repository paths, running scripts in a fresh process, and synthetic
released checkpoints."""

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Outputs of the released modules (see tests/fixtures/README.md).
FIXTURES = Path(os.environ.get("PLAINMAMBA_FIXTURES", REPO / "tests" / "fixtures"))


def _script_env(data_root) -> dict:
    # Faulthandler: a process that dies by a signal prints every thread's Python stack.
    return dict(
        os.environ,
        DETECTRON2_DATASETS=str(data_root),
        CUDA_VISIBLE_DEVICES="",
        PYTHONFAULTHANDLER="1",
    )


def run_script(args, data_root, timeout=600):
    """Run a repository script on the CPU with its own data root; returns (exit code, output)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        env=_script_env(data_root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def run_scripts_together(runs, timeout=900):
    """Run several repository scripts at once, each ``(args, data_root)``; returns one
    (exit code, output) per run, in order. For one-thread runs that would leave cores idle."""
    import subprocess
    import sys
    import tempfile
    import time

    procs = []
    for args, data_root in runs:
        log = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            cwd=REPO,
            env=_script_env(data_root),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append((proc, log))
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc, log in procs:
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = f"timed out after {timeout} s"
            log.seek(0)
            results.append((code, log.read()))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return results


def set_env(monkeypatch, name: str, value) -> None:
    """Set ``$name`` to ``str(value)`` for the test, or unset it when ``value`` is None."""
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, str(value))


def in_interpreter_child(child_env: str) -> bool:
    """True inside the child process started by :func:`run_under_triton_interpreter`."""
    return os.environ.get(child_env) == "1" and os.environ.get("TRITON_INTERPRET") == "1"


def run_under_triton_interpreter(test_file: str, child_env: str) -> None:
    """Run every case of ``test_file`` on CPU through Triton's interpreter, in a fresh process.

    ``TRITON_INTERPRET`` must be set before Triton itself is imported, which this process may
    already have done for other tests. Asserts that the child passed and skipped nothing.
    """
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    env[child_env] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report


# Synthetic checkpoints in the released (MMCV) layouts, and the tiny released classifier.
NUM_CLASSES = 80  # COCO, as in the released detectors
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_module(keys, prefix, cin, cout, k, norm):
    """MMCV ConvModule: ``conv`` (bias only without a norm) and a SyncBN called ``bn``."""
    keys[f"{prefix}.conv.weight"] = [cout, cin, k, k]
    if norm:
        for p in BN:
            keys[f"{prefix}.bn.{p}"] = [] if p == "num_batches_tracked" else [cout]
    else:
        keys[f"{prefix}.conv.bias"] = [cout]


def plain_layer(keys, prefix, weight_shape, out_channels=None):
    """A layer with ``weight`` and ``bias``."""
    keys[f"{prefix}.weight"] = list(weight_shape)
    keys[f"{prefix}.bias"] = [out_channels or weight_shape[0]]


def mmdet_keys(kind, backbone_keys, embed_dim, num_classes=NUM_CLASSES):
    """Every key and shape of a released PlainMamba ``kind`` detector on the given backbone."""
    keys = {k: list(v) for k, v in backbone_keys.items()}
    if kind == "mask_rcnn":
        for i in range(4):
            conv_module(keys, f"neck.lateral_convs.{i}", embed_dim, 256, 1, norm=True)
            conv_module(keys, f"neck.fpn_convs.{i}", 256, 256, 3, norm=True)
        plain_layer(keys, "rpn_head.rpn_conv", [256, 256, 3, 3])
        plain_layer(keys, "rpn_head.rpn_cls", [3, 256, 1, 1])
        plain_layer(keys, "rpn_head.rpn_reg", [12, 256, 1, 1])
        box, mask = "roi_head.bbox_head", "roi_head.mask_head"
        for k in range(4):
            conv_module(keys, f"{box}.shared_convs.{k}", 256, 256, 3, norm=True)
            conv_module(keys, f"{mask}.convs.{k}", 256, 256, 3, norm=False)
        plain_layer(keys, f"{box}.shared_fcs.0", [1024, 256 * 7 * 7])
        plain_layer(keys, f"{box}.fc_cls", [num_classes + 1, 1024])
        plain_layer(keys, f"{box}.fc_reg", [4 * num_classes, 1024])
        plain_layer(
            keys, f"{mask}.upsample", [256, 256, 2, 2], 256
        )  # ConvTranspose2d: in, out, k, k
        plain_layer(keys, f"{mask}.conv_logits", [num_classes, 256, 1, 1])
    else:
        for i in range(3):
            conv_module(keys, f"neck.lateral_convs.{i}", embed_dim, 256, 1, norm=True)
        for i in range(5):
            conv_module(keys, f"neck.fpn_convs.{i}", 256, 256, 3, norm=True)
        for k in range(4):
            conv_module(keys, f"bbox_head.cls_convs.{k}", 256, 256, 3, norm=False)
            conv_module(keys, f"bbox_head.reg_convs.{k}", 256, 256, 3, norm=False)
        plain_layer(keys, "bbox_head.retina_cls", [9 * num_classes, 256, 3, 3])
        plain_layer(keys, "bbox_head.retina_reg", [9 * 4, 256, 3, 3])
    return keys


def materialize(keys, seed=0):
    """Random values for ``{key: shape}``; BN counters are integers like in real files."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (
            torch.tensor(7 + i)
            if k.endswith("num_batches_tracked")
            else torch.randn(*shape, generator=g) * 0.05
        )
        for i, (k, shape) in enumerate(keys.items())
    }


def released(state):
    """``state`` wrapped as the released training code saves it."""
    return {"state_dict": dict(state), "meta": {"epoch": 12, "CLASSES": ["c"] * NUM_CLASSES}}


def build_tiny(config, num_classes, impl):
    """The tiny classifier a fixture file describes (its released config keys), on scan ``impl``."""
    from plainmamba.modeling import ImageClassifier, PlainMamba

    mamba = config["layer_cfgs"]["mamba_cfg"]
    backbone = PlainMamba(
        img_size=config["img_size"],
        patch_size=config["patch_size"],
        embed_dim=config["embed_dims"],
        depth=config["num_layers"],
        num_stem_convs=config["num_convs_patch_embed"],
        dwconv_layers=config["layers_with_dwconv"],
        d_state=mamba["d_state"],
        expand=mamba["expand"],
        conv_size=mamba["conv_size"],
        out_indices=config["out_indices"],
        final_norm=config["final_norm"],
        scan_impl=impl,
    )
    return ImageClassifier(backbone=backbone, num_classes=num_classes).eval()


def rel_err(a, b):
    """Largest absolute difference relative to the largest magnitude of ``b``."""
    return ((a - b).abs().max() / b.abs().max()).item()
