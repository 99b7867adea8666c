#!/usr/bin/env python
"""Shift ADE20K (SceneParsing, ADEChallengeData2016) labels for Detectron2's built-in data sets.

ADE20K's annotation PNGs use 0 for "unlabelled" and 1..150 for the classes. Detectron2's
``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val`` read ``annotations_detectron2/`` and expect
0..149 with 255 ignored (MMSegmentation's ``reduce_zero_label``), so this script writes, for every
``annotations/{training,validation}/*.png``, the same file under ``annotations_detectron2/``
with 0 -> 255 and k -> k - 1.

    python datasets/prepare_ade20k_sem_seg.py [--root $DETECTRON2_DATASETS] [--workers N]

Outputs newer than their input are skipped, so an interrupted run can simply be restarted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("training", "validation")
NUM_CLASSES = 150
IGNORE_LABEL = 255
# (v - 1) mod 256 for every uint8 value: 0 -> 255, k -> k - 1.
SHIFT_LUT = ((np.arange(256) - 1) % 256).astype(np.uint8)


def _convert_one(job: tuple[str, str]) -> tuple[str, str, str]:
    """Convert one annotation; return (status, source, detail).

    status is "converted", "skipped" (output newer than input), "failed" (detail says why) or
    "unexpected" (converted, but it held values above 150).
    """
    src, dst = job
    try:
        if os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src):
            return "skipped", src, ""
        with Image.open(src) as im:
            label = np.asarray(im)
        if label.ndim != 2 or label.dtype != np.uint8:
            return "failed", src, f"expected a single-channel uint8 PNG, got {label.shape}"
        # Write then rename, so an interrupted run never leaves a truncated file that looks
        # done; the temporary name does not end in "png", so load_sem_seg never lists it.
        tmp = f"{dst}.{os.getpid()}.tmp"
        Image.fromarray(SHIFT_LUT[label], "L").save(tmp, format="PNG")
        os.replace(tmp, dst)
        return ("unexpected" if int(label.max()) > NUM_CLASSES else "converted"), src, ""
    except Exception as e:  # a bad file is reported with its name; the others still convert
        return "failed", src, f"{type(e).__name__}: {e}"


def _jobs(root: Path) -> list[tuple[str, str]]:
    ade = root / "ADEChallengeData2016"
    jobs = []
    for split in SPLITS:
        src_dir = ade / "annotations" / split
        if not src_dir.is_dir():
            raise FileNotFoundError(
                f"ADE20K annotation folder not found: {src_dir}\n"
                f"Download ADEChallengeData2016.zip (http://sceneparsing.csail.mit.edu/) and "
                f"unzip it into {root}, or pass --root (default: $DETECTRON2_DATASETS or "
                f"./datasets)."
            )
        dst_dir = ade / "annotations_detectron2" / split
        dst_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted(src_dir.glob("*.png")):
            jobs.append((str(src), str(dst_dir / src.name)))
    return jobs


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; return the process exit status (0 ok, 1 some files failed, 2 usage)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=None,
        help="folder holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes to convert with (default: min(8, CPU count))",
    )
    args = parser.parse_args(argv)
    if args.root is None:
        # Imported only here: --help and an explicit --root need no torch or Detectron2.
        from plainmamba.data.paths import datasets_root

        args.root = str(datasets_root())
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")

    root = Path(args.root).expanduser()
    try:
        jobs = _jobs(root)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    counts = {"converted": 0, "skipped": 0, "failed": 0}
    unexpected, failures = [], []
    if args.workers == 1 or len(jobs) < 2:
        results = map(_convert_one, jobs)
        pool = None
    else:
        pool = multiprocessing.Pool(args.workers)
        results = pool.imap_unordered(_convert_one, jobs, chunksize=16)
    try:
        for status, src, detail in results:
            if status == "unexpected":
                status = "converted"
                unexpected.append(src)
            counts[status] += 1
            if status == "failed":
                failures.append(f"{src}: {detail}")
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    out_dir = root / "ADEChallengeData2016" / "annotations_detectron2"
    print(
        f"ADE20K labels -> {out_dir}: {counts['converted']} converted, "
        f"{counts['skipped']} up to date, {counts['failed']} failed "
        f"({len(jobs)} annotation files in {', '.join(SPLITS)})"
    )
    if unexpected:
        print(
            f"warning: {len(unexpected)} file(s) had values above {NUM_CLASSES} (not ADE20K's "
            f"150 classes?), e.g. {unexpected[0]}",
            file=sys.stderr,
        )
    for line in failures[:20]:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
