#!/usr/bin/env python
"""Print the optimizer parameter groups a config builds: lr, weight decay and size of each.

    python tools/print_param_groups.py --config-file ImageNet/plainmamba_l1_300e.py
    python tools/print_param_groups.py --params \
        --config-file configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py

The model is built on the CPU and ``optimizer.params`` instantiated as the trainer does. With
``--params`` every parameter is listed with its group's lr and weight decay; for the configs of
the released recipes (``plainmamba.solver.released_param_groups``) also with its released name
and the MMCV rule that decided (docs/recipes.md#weight-decay-per-parameter).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

_RELEASED_TARGET = "plainmamba.solver.released_param_groups"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="config path or model-zoo name"
    )
    parser.add_argument("--params", action="store_true", help="also list every parameter")
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE", help="LazyConfig overrides"
    )
    return parser


def param_groups_of(config_file: str, opts: List[str]) -> Dict[str, Any]:
    """Build the model and the groups of ``config_file``: ``groups`` (rows of
    :func:`plainmamba.solver.describe_param_groups`), ``lr``, ``weight_decay``, ``optimizer``
    and ``decisions`` (per-parameter :class:`~plainmamba.solver.ParamDecision`, or ``None``)."""
    from detectron2.config import LazyConfig, instantiate

    from plainmamba import model_zoo
    from plainmamba.engine import apply_overrides
    from plainmamba.solver import (
        describe_param_groups,
        released_param_decisions,
        released_param_groups,
    )

    cfg = (
        LazyConfig.load(config_file)
        if os.path.isfile(config_file)
        else model_zoo.get_config(config_file)
    )
    cfg = apply_overrides(cfg, list(opts), source=config_file)
    model = instantiate(cfg.model)
    opt = cfg.optimizer
    lr = float(opt.get("lr", 0.0))
    weight_decay = float(opt.get("weight_decay", 0.0))
    params_cfg = opt.params
    params_cfg.model = model
    groups = instantiate(params_cfg)
    decisions = None
    if params_cfg.get("_target_") in (released_param_groups, _RELEASED_TARGET):
        decisions = released_param_decisions(model, params_cfg.recipe)
    target = opt.get("_target_")
    return {
        "optimizer": getattr(target, "__name__", str(target)),
        "lr": lr,
        "weight_decay": weight_decay,
        "groups": describe_param_groups(model, groups, lr, weight_decay),
        "decisions": decisions,
    }


def format_report(info: Dict[str, Any], with_params: bool = False) -> str:
    """The table that :func:`main` prints."""
    lines = [
        f"optimizer {info['optimizer']}: lr {info['lr']:g}, weight_decay {info['weight_decay']:g}",
        f"{'group':>5}  {'lr':>10}  {'weight_decay':>12}  {'tensors':>7}  {'elements':>11}",
    ]
    for i, row in enumerate(info["groups"]):
        lines.append(
            f"{i:>5}  {row['lr']:>10.4g}  {row['weight_decay']:>12.4g}  {row['tensors']:>7}  "
            f"{row['elements']:>11,}"
        )
    if with_params:
        decisions = {d.name: d for d in info["decisions"] or []}
        lines.append("")
        for i, row in enumerate(info["groups"]):
            for name in row["names"]:
                d = decisions.get(name)
                extra = f"  <- {d.released_name} ({d.rule})" if d else ""
                lines.append(
                    f"{i:>5}  {row['lr']:>10.4g}  {row['weight_decay']:>12.4g}  {name}{extra}"
                )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from plainmamba.engine import ConfigError

    try:
        info = param_groups_of(args.config_file, args.opts)
    except (FileNotFoundError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(info, args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
