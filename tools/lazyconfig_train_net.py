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

from detectron2.engine import launch

from plainmamba.engine import ConfigError, check_args, default_train_argument_parser, launched_main


def invoke_main() -> None:
    """Parse the command line, check the config, and start one process per GPU (or CPU)."""
    parser = default_train_argument_parser()
    args = parser.parse_args()
    try:
        check_args(args)  # in the launcher, so mistakes show before any worker starts
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    launch(
        launched_main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
