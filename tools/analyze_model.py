#!/usr/bin/env python
"""Parameters, FLOPs, activations and structure of a PlainMamba model (Detectron2's analyze_model).

    python tools/analyze_model.py --config-file ImageNet/plainmamba_l1_300e.py --tasks flop
    python tools/analyze_model.py --tasks flop --input-size 800 1280 \\
        --config-file configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py

Inputs are generated (uniform noise) at ``--input-size`` H W, default 224 x 224 for classifiers,
800 x 1280 for detectors and 512 x 2048 for segmentors, the sizes of the published FLOPs.
FLOPs follow fvcore (one multiply-add = one flop) with the selective scan and the deformable
attention counted by ``plainmamba.analysis`` (scan: 9 flops per step, direction, channel and
state plus 1 per channel, as in the released counter; ``--scan-convention mac`` for multiply-adds
only). Operators that are not counted are listed; ``--strict`` makes that an error. For Mask
R-CNN the box score threshold is set to 0 so that every image keeps its 100 top detections for
the mask head, as the released counter feeds 100 boxes (random weights would keep none);
``--opts model.roi_heads.box_predictor.test_score_thresh=0.05`` restores the config's value.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

DEFAULT_SIZES = {
    "classification": (224, 224),
    "detection": (800, 1280),
    "segmentation": (512, 2048),
}
TASKS = ("parameter", "flop", "activation", "structure")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="config path or model-zoo name"
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["parameter", "flop"])
    parser.add_argument(
        "--input-size", nargs=2, type=int, metavar=("H", "W"), help="generated input size"
    )
    parser.add_argument(
        "--num-inputs", type=int, default=1, help="generated inputs; FLOPs are averaged"
    )
    parser.add_argument("--scan-convention", choices=("released", "mac"), default="released")
    parser.add_argument("--max-depth", type=int, default=3, help="depth of the module tables")
    parser.add_argument("--strict", action="store_true", help="fail if an operator is not counted")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE", help="LazyConfig overrides"
    )
    return parser


def load(config_file: str, opts: Sequence[str]):
    """The config (path or model-zoo name) with the analysis defaults and ``opts`` applied."""
    from detectron2.config import LazyConfig

    from plainmamba import model_zoo
    from plainmamba.engine import apply_overrides

    cfg = (
        LazyConfig.load(config_file)
        if os.path.isfile(config_file)
        else model_zoo.get_config(config_file)
    )
    predictor = cfg.model.get("roi_heads", {}).get("box_predictor", {})
    if "test_score_thresh" in predictor:
        predictor.test_score_thresh = 0.0
    return apply_overrides(cfg, list(opts), source=config_file)


def build(cfg: Any):
    from detectron2.config import instantiate

    from plainmamba.checkpoint import PlainMambaCheckpointer

    model = instantiate(cfg.model).eval()
    checkpoint = cfg.get("train", {}).get("init_checkpoint", "")
    if checkpoint:
        PlainMambaCheckpointer(model).load(checkpoint)
    return model


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from fvcore.nn import parameter_count_table

    from plainmamba import analysis, model_zoo
    from plainmamba.engine import ConfigError

    try:
        cfg = load(args.config_file, args.opts)
    except (FileNotFoundError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = build(cfg)
    task = analysis.task_of(model)
    height, width = args.input_size or DEFAULT_SIZES[task]
    result: Dict[str, Any] = {
        "config": args.config_file,
        "task": task,
        "input_size": [height, width],
    }
    entry = None if os.path.isfile(args.config_file) else model_zoo.entry(args.config_file)
    if entry is None:
        # A path inside configs/ has a model-zoo name too.
        root = os.path.realpath(str(model_zoo.configs_root()))
        path = os.path.realpath(args.config_file)
        if path.startswith(root + os.sep):
            entry = model_zoo.entry(os.path.relpath(path, root))
    published = entry.published if entry else {}

    if "structure" in args.tasks:
        print(model)

    if "parameter" in args.tasks:
        params = analysis.count_parameters(model)
        result["params"] = params
        print(parameter_count_table(model, max_depth=args.max_depth))
        line = f"parameters: {params / 1e6:.2f} M"
        if "params_m" in published:
            scope = "backbone" if entry.params_of == "backbone" else "model"
            if scope == "backbone":
                backbone = analysis.count_parameters(model.backbone)
                result["backbone_params"] = backbone
                line += f" (backbone {backbone / 1e6:.2f} M)"
            line += f"; published {published['params_m']} M ({scope})"
        print(line)

    inputs = analysis.make_inputs(model, height, width, args.num_inputs)
    if "flop" in args.tasks:
        reports = []
        for record in inputs:
            try:
                reports.append(
                    analysis.flop_count(model, [record], args.scan_convention, strict=args.strict)
                )
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
        summary = analysis.summarize(reports)
        result.update(
            gflops=summary["total"] / 1e9,
            gflops_by_operator={k: v / 1e9 for k, v in summary.items() if k != "total"},
            uncounted_operators=reports[0].unsupported,
            skipped_elementwise=reports[0].skipped_negligible,
            scan_convention=args.scan_convention,
        )
        print(reports[0].table(args.max_depth))
        print(f"FLOPs by operator (G, mean of {len(reports)} input(s) of {height}x{width}):")
        for name, value in result["gflops_by_operator"].items():
            print(f"  {name:22s} {value:10.3f}")
        line = f"total: {result['gflops']:.2f} GFLOPs at {height}x{width}"
        if "gflops" in published and entry.flops_size == (height, width):
            result["published_gflops"] = published["gflops"]
            ratio = result["gflops"] / published["gflops"]
            line += f"; published {published['gflops']} GFLOPs ({100 * (ratio - 1):+.1f}%)"
        print(line)
        print(
            "convention: fvcore, one multiply-add = one flop; scan counted as "
            + (
                "9 per step, direction, channel and state + 1 per channel (released counter)"
                if args.scan_convention == "released"
                else "multiply-adds only (5 per state, 2 per channel, softplus once)"
            )
            + "; deformable attention 5 per sampled point and channel"
        )
        skipped = ", ".join(f"{k} x{v}" for k, v in sorted(reports[0].skipped_negligible.items()))
        print(f"not counted (element-wise, as in fvcore): {skipped or 'none'}")
        if reports[0].unsupported:
            names = ", ".join(f"{k} x{v}" for k, v in sorted(reports[0].unsupported.items()))
            print(f"WARNING: operators NOT counted, their flops are missing: {names}")

    if "activation" in args.tasks:
        total, by_op, uncounted = analysis.activation_count(model, inputs[:1])
        result.update(activations_m=total / 1e6, activations_by_operator=by_op)
        print(f"activations: {total / 1e6:.2f} M at {height}x{width}")
        for name, value in sorted(by_op.items(), key=lambda kv: -kv[1]):
            print(f"  {name:22s} {value / 1e6:10.3f} M")
        if uncounted:
            print(
                "no activation handle (fvcore counts the outputs of convolutions, linear layers, "
                f"matmuls and the two custom ops only): {', '.join(sorted(uncounted))}"
            )

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
