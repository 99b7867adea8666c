#!/usr/bin/env python
"""Pack a class-folder image tree into one LMDB for the classification trainer.

    python tools/create_lmdb_dataset.py --image-folder IMAGENET/train \\
        --output IMAGENET/lmdb/train.lmdb [--class-file classes.txt] [--verify]
    python tools/create_lmdb_dataset.py --imagenet-root IMAGENET [--verify]

The second form converts ``ROOT/train`` and ``ROOT/val`` into ``ROOT/lmdb/{train,val}.lmdb``
with the class list of ``train`` (or ``--class-file``) for both: the sorted class folders of
``train`` that hold images (empty ones are warned about and left out), and a ``val`` class with
images that ``train`` lacks stops the run naming both folders. Images are stored with their
original bytes; labels, class names and a CRC-32 per image (checked whenever a record is read)
go into the LMDB's metadata (see ``plainmamba/data/classification/lmdb_format.py``). A file that is not a
readable image stops the run with
its path (exit status 1) unless ``--skip-bad`` is given, which leaves such files out and lists
them at the end. User errors exit with status 1 and a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--image-folder", help="class-folder tree: FOLDER/<class>/<images>")
    src.add_argument(
        "--imagenet-root", help="convert ROOT/train and ROOT/val into ROOT/lmdb/{train,val}.lmdb"
    )
    parser.add_argument("--output", help="LMDB to write (a folder); with --image-folder only")
    parser.add_argument(
        "--class-file",
        help="one class folder name per line ('synset [name]'), in label order "
        "(default: sorted folder names)",
    )
    parser.add_argument("--verify", action="store_true", help="read every record back and check")
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images out and list them"
    )
    parser.add_argument(
        "--decode-check",
        action="store_true",
        help="decode every image while packing (catches truncated JPEGs; slower). By default "
        "only the headers are checked",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--threads", type=int, default=8, help="threads reading files")
    parser.add_argument(
        "--commit-every", type=int, default=1000, help="images per LMDB write transaction"
    )
    args = parser.parse_args(argv)
    if args.image_folder and not args.output:
        parser.error("--image-folder needs --output")
    if args.imagenet_root and args.output:
        parser.error("--output goes with --image-folder; --imagenet-root writes ROOT/lmdb/")
    return args


def _fail(message: str) -> int:
    print(f"create_lmdb_dataset.py: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the exit status."""
    args = _parse(argv)
    if args.imagenet_root:
        root = Path(args.imagenet_root)
        jobs = [(root / s, root / "lmdb" / f"{s}.lmdb") for s in ("train", "val")]
    else:
        jobs = [(Path(args.image_folder), Path(args.output))]
    skipped: list[tuple[str, str]] = []

    def on_bad(record: dict, err: Exception) -> None:
        skipped.append((record["file_name"], f"{type(err).__name__}: {err}"))

    # Checked before the (slow) imports, so that a mistyped path fails at once.
    for folder, output in jobs:
        if not folder.is_dir():
            return _fail(f"image folder {folder} does not exist")
        if output.exists() and not args.overwrite:
            return _fail(f"{output} exists; pass --overwrite to replace it")
    # Warnings of the data code (empty class folders) read as this tool's.
    logging.basicConfig(format="create_lmdb_dataset.py: warning: %(message)s")
    # Imported late so that --help and path errors are quick.
    from plainmamba.data.classification import (
        create_lmdb_dataset,
        list_class_folders,
        load_image_folder,
        read_class_file,
    )
    from plainmamba.data.mapper import ImageReadError

    try:
        if args.class_file:
            class_names = read_class_file(args.class_file)
            source = f"the class file {args.class_file}"
        else:
            # The first folder (train) fixes the class order for every job; an empty folder is
            # no class (it would shift the labels after it).
            class_names = list_class_folders(jobs[0][0].resolve(), skip_empty=True)
            source = str(jobs[0][0].resolve())
        # List every split before writing any, so a badly laid out val fails before train is packed.
        listed = [load_image_folder(folder, class_names, class_source=source) for folder, _ in jobs]
        for (folder, output), records in zip(jobs, listed):
            start = time.time()
            count = create_lmdb_dataset(
                records,
                output,
                class_names,
                commit_every=args.commit_every,
                verify=args.verify,
                overwrite=args.overwrite,
                full_decode=args.decode_check,
                on_bad=on_bad if args.skip_bad else None,
                num_threads=args.threads,
                progress=True,
            )
            checked = ", verified" if args.verify else ""
            print(
                f"wrote {count} images of {len(class_names)} classes from {folder} to {output}"
                f" in {time.time() - start:.1f}s{checked}"
            )
    # RuntimeError: --verify found a record that differs from its file.
    except (ImageReadError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        hint = " (use --skip-bad to leave such files out)" if isinstance(e, ImageReadError) else ""
        return _fail(f"{e}{hint}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
