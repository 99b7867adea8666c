#!/usr/bin/env python
"""Export a PlainMamba model to TorchScript or ONNX (Detectron2's tools/deploy/export_model.py).

    python tools/deploy/export_model.py --config-file quickstart/plainmamba_tiny_cls_shapes.py \\
        --export-method tracing --format torchscript onnx --output output/export_cls
    python tools/deploy/export_model.py --config-file COCO/mask_rcnn_plainmamba_adapter_l1_1x.py \\
        --format torchscript --output output/export_mrcnn --sample-image input.jpg \\
        --opts train.init_checkpoint=output/mask_rcnn_l1.pth

The model runs on the CPU with the exportable paths: the ``chunked`` selective scan (standard
tensor ops) and the reference deformable attention. It is traced on one image (``--sample-image``,
resized to ``--input-size`` if given, else a generated picture of ``--input-size``), and the
export is for that image size. Every task exports whole to TorchScript (``model.ts``) and ONNX
(``model.onnx``); ``--parts backbone_fpn`` adds a detector's FPN maps (``backbone_fpn.onnx``).
Each file is loaded back
(``torch.jit.load``, ONNX Runtime's CPU provider) and compared with the eager model. See
docs/deploy.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import List, Optional

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

DEFAULT_SIZES = {"classification": None, "segmentation": (512, 512), "detection": (800, 800)}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="config path or model-zoo name"
    )
    parser.add_argument("--export-method", default="tracing", help="tracing (or scripting)")
    parser.add_argument(
        "--format", nargs="+", default=["torchscript"], metavar="FORMAT",
        help="torchscript and/or onnx",
    )  # fmt: skip
    parser.add_argument(
        "--parts", nargs="+", default=["model"], metavar="PART",
        help="model (the whole model, default) and/or backbone_fpn (a detector's FPN maps, ONNX)",
    )  # fmt: skip
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument("--sample-image", help="image to trace on (default: a generated one)")
    parser.add_argument(
        "--input-size", nargs=2, type=int, metavar=("H", "W"),
        help="trace size (default: the sample image's size, else the classifier's training size, "
        "512x512 for segmentors, 800x800 for detectors)",
    )  # fmt: skip
    parser.add_argument("--no-verify", action="store_true", help="skip the check against eager")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="largest relative difference from eager accepted by the check (default 1e-4)",
    )  # fmt: skip
    parser.add_argument(
        "--benchmark", type=int, default=0, metavar="N",
        help="also time N calls of the eager model (numba and chunked scan) and of each file",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help="threads of PyTorch and ONNX Runtime for --benchmark (default: their own)",
    )  # fmt: skip
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE",
        help="LazyConfig overrides, e.g. train.init_checkpoint=model_final.pth",
    )  # fmt: skip
    return parser


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from plainmamba import deploy

    # Everything that can be refused is refused before a model is built.
    try:
        deploy.check_request(args.format, args.export_method, args.parts)
    except deploy.ExportError as err:
        return fail(str(err))
    if args.input_size and min(args.input_size) < 1:
        return fail(f"--input-size must be positive, got {args.input_size}")
    size = tuple(args.input_size) if args.input_size else None
    image = None
    if args.sample_image:
        try:
            image = deploy.read_image(args.sample_image, size)
        except deploy.ExportError as err:
            return fail(str(err))

    import torch
    from detectron2.config import LazyConfig, instantiate

    from plainmamba import model_zoo
    from plainmamba.engine import ConfigError, apply_overrides

    try:
        if os.path.isfile(args.config_file):
            cfg = LazyConfig.load(args.config_file)
        else:
            cfg = model_zoo.get_config(args.config_file)
        if "train" not in cfg:
            # A model-only config: train.init_checkpoint is still where the weights are named.
            cfg.train = {"init_checkpoint": ""}
        cfg = apply_overrides(cfg, list(args.opts), source=args.config_file)
    except (FileNotFoundError, ConfigError) as err:
        return fail(str(err))
    except Exception as err:  # noqa: BLE001 - a config is arbitrary Python: name the file
        return fail(f"cannot load config {args.config_file}: {type(err).__name__}: {err}")
    weights = str(cfg.get("train", {}).get("init_checkpoint", "") or "")
    if weights and "://" not in weights and not os.path.isfile(weights):
        return fail(f"weights file {weights!r} (train.init_checkpoint) does not exist")

    try:
        model = instantiate(cfg.model)
    except Exception as err:  # noqa: BLE001
        return fail(
            f"the model of config {args.config_file} does not build: {type(err).__name__}: {err}"
        )
    model.to("cpu")
    if weights:
        from plainmamba.checkpoint import PlainMambaCheckpointer

        try:
            PlainMambaCheckpointer(model).load(weights)
        except Exception as err:  # noqa: BLE001 - unreadable, unsafe or mismatched files
            return fail(f"cannot load weights {weights!r}: {type(err).__name__}: {err}")
        print(f"loaded weights {weights}")
    else:
        print("no train.init_checkpoint: exporting the config's initial (untrained) weights")

    counts = deploy.prepare_for_export(model)
    task = deploy.task_of(model)
    print(
        f"export paths: selective scan -> 'chunked' ({counts['scan']} PlainMamba trunk(s)), "
        f"deformable attention -> 'ref' ({counts['deform_attn']} module(s)); CPU, eval mode"
    )
    if image is None:
        if size is None:
            size = DEFAULT_SIZES[task]
            if size is None:  # a classifier: its training size
                side = model.backbone.pos_grid[0] * model.backbone.patch_size
                size = (side, side)
        image = deploy.generated_image(*size)
    print(f"task: {task}; tracing on a {image.shape[1]}x{image.shape[2]} image")

    start = time.perf_counter()
    try:
        files = deploy.export(model, image, args.format, args.output, args.parts)
    except Exception as err:  # noqa: BLE001 - report the tracer's or exporter's reason
        return fail(f"export failed: {type(err).__name__}: {err}")
    print(f"exported in {time.perf_counter() - start:.1f} s")

    status = 0
    if not args.no_verify:
        for item in files:
            want = deploy.eager_outputs(model, image, item.part)
            run = deploy.run_torchscript if item.format == "torchscript" else deploy.run_onnx
            try:
                got = run(item.path, image)
                item.max_rel_diff = deploy.compare(got, want, item.outputs)
            except Exception as err:  # noqa: BLE001
                print(f"check {item.path}: FAILED: {err}")
                status = 1
                continue
            worst = max(item.max_rel_diff.values(), default=0.0)
            verdict = "ok" if worst <= args.tolerance else f"ABOVE {args.tolerance:g}"
            runner = "torch.jit.load" if item.format == "torchscript" else "ONNX Runtime (CPU)"
            print(
                f"check {item.path} with {runner} against eager PyTorch (default paths): "
                f"max relative difference {worst:.2e} {verdict}"
            )
            if worst > args.tolerance:
                status = 1
    if args.benchmark > 0:
        times = deploy.benchmark(model, image, files, args.benchmark, threads=args.threads)
        print(
            f"latency, {image.shape[1]}x{image.shape[2]} image, median of {args.benchmark} calls, "
            f"{args.threads or 'default'} threads:"
        )
        for name, ms in times:
            print(f"  {name:<40} {ms:9.1f} ms")
    manifest = deploy.write_manifest(
        files,
        args.output,
        {
            "config": args.config_file,
            "task": task,
            "weights": weights or None,
            "export_method": args.export_method,
            "torch": torch.__version__,
            "onnx_opset": deploy.ONNX_OPSET,
        },
    )
    print(f"wrote {manifest}")
    return status


if __name__ == "__main__":
    sys.exit(main())
