#!/usr/bin/env python
"""Train or evaluate a LazyConfig (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``,
``train``) on Detectron2's engine; the logic lives in :mod:`plainmamba.engine`.

Usage (from the repository root)::

    # one process (GPU if train.device is cuda and there is one, else CPU)
    python tools/lazyconfig_train_net.py --config-file tests/configs/toy_regression.py

    # two processes on one machine: NCCL with GPUs, GLOO on a CPU-only machine
    python tools/lazyconfig_train_net.py --num-gpus 2 --dist-url auto \\
        --config-file tests/configs/toy_regression.py train.output_dir=output/toy

    # override config values (the key must exist; '+key=value' may also add a new one)
    python tools/lazyconfig_train_net.py --config-file CONFIG.py train.max_iter=1000 \\
        train.amp.enabled=True +train.amp.precision=bfloat16 \\
        +train.clip_grad.enabled=True +train.clip_grad.max_norm=1.0

    # continue from the last checkpoint in train.output_dir
    python tools/lazyconfig_train_net.py --config-file CONFIG.py --resume

    # evaluate a checkpoint
    python tools/lazyconfig_train_net.py --config-file CONFIG.py --eval-only \\
        train.init_checkpoint=output/toy/model_final.pth
"""

from plainmamba.lifecycle import mark_as_parent, tie_to_parent

if __name__ == "__mp_main__":
    # Every process a run spawns (ranks, their data-loader workers) imports this script first:
    # tie it to its parent before the slow imports below, so it dies with the parent.
    tie_to_parent()

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

from detectron2.engine import launch  # noqa: E402

from plainmamba.checkpoint import CheckpointError  # noqa: E402
from plainmamba.engine import (  # noqa: E402
    ConfigError,
    check_args,
    default_train_argument_parser,
    launched_main,
)


def invoke_main() -> None:
    """Parse the command line, check the config, and start one process per GPU (or CPU)."""
    parser = default_train_argument_parser()
    args = parser.parse_args()
    try:
        check_args(args)  # in the launcher, so mistakes show before any worker starts
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    mark_as_parent()  # ranks and their workers end when this process ends, even by kill -9
    try:
        launch(
            launched_main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except CheckpointError as err:  # single-process runs: one line, not a traceback
        parser.exit(2, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    invoke_main()
