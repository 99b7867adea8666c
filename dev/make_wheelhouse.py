#!/usr/bin/env python
"""Collect every wheel this project needs into ``wheelhouse/`` for a host without internet.

    python dev/make_wheelhouse.py                                  # CPython 3.12, x86-64 Linux
    python dev/make_wheelhouse.py --python-version 3.10 --platform manylinux_2_17_x86_64
    python dev/make_wheelhouse.py --with-torch "torch==2.11.0" "torchvision==0.26.0"

What goes in: setup.py's ``install_requires`` and the Detectron2 route of dev/setup_env.sh
(the ``sal-detectron2`` wheel, tagged cp310 only for compiled ops this project never imports,
so it is fetched as 3.10 and unpacked with ``installer``), each with its dependencies, resolved
here for the target interpreter and platform (``pip download --only-binary=:all:
--python-version X --platform Y``). torch, torchvision and triton (and NVIDIA's CUDA wheels)
are left out unless ``--with-torch`` is given: a GPU host keeps the CUDA build of PyTorch it
has. Packages published only as pure-Python sources are built into ``py3-none-any`` wheels.

It writes ``wheelhouse/requirements.txt`` (every wheel, pinned) and ``wheelhouse/INSTALL.txt``
(the offline install steps; INSTALL.md has them too).
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTRON2 = "sal-detectron2==0.7.2"
DETECTRON2_PYTHON = "3.10"
# Left to the host unless --with-torch: its own CUDA build of PyTorch brings these.
HOST_PROVIDED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
EXTRA_TOOLS = ["installer", "pip", "wheel"]  # to unpack the Detectron2 wheel and install


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_requires(setup_py: str) -> List[str]:
    """The literal ``install_requires`` list of setup.py, read without running it."""
    tree = ast.parse(open(setup_py).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            for kw in node.keywords:
                if kw.arg == "install_requires":
                    return list(ast.literal_eval(kw.value))
    raise SystemExit(f"no install_requires list in {setup_py}")


def platform_tags(platform: str) -> List[str]:
    """pip matches --platform exactly: list every manylinux tag a glibc-N host accepts."""
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
    tags = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, 16, -1)]
    if (major, minor) >= (2, 17):
        tags.append(f"manylinux2014_{arch}")
    if (major, minor) >= (2, 12):
        tags.append(f"manylinux2010_{arch}")
    if (major, minor) >= (2, 5):
        tags.append(f"manylinux1_{arch}")
    return tags


def wheel_requires(path: str, python_version: str) -> List[str]:
    """Names of a wheel's requirements that apply on the target (no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode())
    full = python_version if python_version.count(".") == 2 else python_version + ".0"
    env = dict(python_version=".".join(full.split(".")[:2]), python_full_version=full, extra="")
    names = []
    for line in msg.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            names.append(req.name)
    return names


def wheel_name_version(path: str) -> tuple:
    name, version = os.path.basename(path).split("-")[:2]
    return canonical(name), version


class Collector:
    """pip's own resolver for the target (a dry run), then one download of the pinned set.

    Packages published only as sources are built here into wheels, which must come out pure
    Python (``none-any``), and offered to the resolver through ``--find-links``.
    """

    def __init__(self, dest: str, python_version: str, platform: str):
        self.dest = dest
        self.target = ["--only-binary=:all:", "--python-version", python_version,
                       "--implementation", "cp"]  # fmt: skip
        for tag in platform_tags(platform):
            self.target += ["--platform", tag]
        self.built = os.path.join(dest, ".built")
        os.makedirs(self.built, exist_ok=True)

    @staticmethod
    def pip(args: Sequence[str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
        return subprocess.run(cmd, capture_output=True, text=True)

    def build_source_only(self, req: str) -> None:
        proc = self.pip(["wheel", "--no-deps", "--no-binary", ":all:", "-w", self.built, req])
        if proc.returncode != 0:
            raise SystemExit(f"cannot build a wheel for {req}:\n{proc.stdout}\n{proc.stderr}")
        for path in glob.glob(os.path.join(self.built, "*.whl")):
            if not path.endswith("-none-any.whl"):
                raise SystemExit(f"{req} has no wheel for the target and builds a binary one")
        print(f"  built {req} from its source (pure Python)", flush=True)

    def resolve(self, roots: Sequence[str]) -> List[tuple]:
        """``(name, version)`` of everything ``roots`` installs on the target."""
        tried: set = set()
        for _ in range(20):
            with tempfile.TemporaryDirectory() as tmp:
                report = os.path.join(tmp, "report.json")
                proc = self.pip(
                    ["install", "--dry-run", "--ignore-installed", "--report", report,
                     "--target", os.path.join(tmp, "t"), "--find-links", self.built,
                     *self.target, *roots]
                )  # fmt: skip
                if proc.returncode == 0:
                    with open(report) as f:
                        items = json.load(f)["install"]
                    return [(canonical(i["metadata"]["name"]), i["metadata"]["version"])
                            for i in items]  # fmt: skip
            # A requirement with no wheel for the target shows up as missing or as the cause
            # of a conflict; build the ones published as pure-Python sources and try again.
            log = proc.stdout + proc.stderr
            wanted = re.findall(r"No matching distribution found for (\S+)", log)
            wanted += re.findall(r"depends on (\S+)", log)
            new = [w.rstrip(".") for w in wanted if w.rstrip(".") not in tried]
            if not new:
                raise SystemExit(f"pip could not resolve the requirements:\n{log[-4000:]}")
            for req in new:
                tried.add(req)
                probe = self.pip(["download", "--no-deps", "-d", self.built, *self.target, req])
                if probe.returncode != 0:
                    self.build_source_only(req)
        raise SystemExit("too many source-only packages")

    def download(self, pins: Sequence[str], python_version: Optional[str] = None) -> List[str]:
        target = list(self.target)
        if python_version:
            target[target.index("--python-version") + 1] = python_version
        before = set(glob.glob(os.path.join(self.dest, "*.whl")))
        proc = self.pip(["download", "--no-deps", "-d", self.dest, "--find-links", self.built,
                         *target, *pins])  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"pip download failed:\n{proc.stderr}")
        return sorted(set(glob.glob(os.path.join(self.dest, "*.whl"))) - before)


INSTALL = """Offline install of plainmamba-detectron2 on a host without internet
(CPython {py}, {platform}; PyTorch with CUDA already installed on the host{torch_note}).

  cd plainmamba-detectron2                    # the repository, with this wheelhouse/ in it
  python -m venv --system-site-packages .venv  # sees the host's torch, torchvision, triton
  . .venv/bin/activate
  pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt
  python -m installer wheelhouse/{d2}  # Detectron2: tagged cp310, pure Python here
  pip install --no-index --no-deps --no-build-isolation -e .
  python -c "import torch, detectron2, plainmamba; print(torch.cuda.is_available())"

The Triton scan is chosen automatically on CUDA (PLAINMAMBA_SCAN=triton forces it).
"""


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="target CPython, e.g. 3.12")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64", help="target wheel tag")
    parser.add_argument("--dest", default=os.path.join(REPO, "wheelhouse"))
    parser.add_argument(
        "--with-torch", nargs="*", default=None, metavar="REQ",
        help="also collect PyTorch (default requirements: torch torchvision) and its CUDA wheels",
    )  # fmt: skip
    parser.add_argument("--clean", action="store_true", help="empty --dest first")
    args = parser.parse_args(argv)

    if args.clean and os.path.isdir(args.dest):
        shutil.rmtree(args.dest)
    os.makedirs(args.dest, exist_ok=True)
    with_torch = args.with_torch is not None
    col = Collector(args.dest, args.python_version, args.platform)
    print(f"collecting for CPython {args.python_version} on {args.platform} into {args.dest}")
    # Detectron2 is unpacked with installer, without its dependencies (dev/setup_env.sh):
    # its requirements join the resolution by name only (it pins numpy<2; the rest runs on 2).
    (d2_path,) = col.download([DETECTRON2], python_version=DETECTRON2_PYTHON) or glob.glob(
        os.path.join(args.dest, "sal_detectron2-*.whl")
    )
    roots = install_requires(os.path.join(REPO, "setup.py")) + EXTRA_TOOLS
    roots += [
        n
        for n in wheel_requires(d2_path, args.python_version)
        if canonical(n) not in map(canonical, roots)
    ]
    if with_torch:
        roots = (args.with_torch or ["torch", "torchvision"]) + roots
    resolved = col.resolve(roots)
    skipped = sorted(n for n, _ in resolved if not with_torch and HOST_PROVIDED.match(n))
    pins = [f"{n}=={v}" for n, v in resolved if with_torch or not HOST_PROVIDED.match(n)]
    for path in col.download(pins):
        print(f"  {os.path.basename(path)}", flush=True)
    have = {"sal-detectron2": d2_path}
    for path in glob.glob(os.path.join(args.dest, "*.whl")):
        have.setdefault(wheel_name_version(path)[0], path)
    d2 = os.path.basename(d2_path)

    with open(os.path.join(args.dest, "requirements.txt"), "w") as f:
        f.write("# pinned by dev/make_wheelhouse.py; Detectron2 is unpacked with installer\n")
        f.writelines(f"{pin}\n" for pin in sorted(pins))
    torch_note = "" if with_torch or not skipped else "; not collected: " + ", ".join(skipped)
    with open(os.path.join(args.dest, "INSTALL.txt"), "w") as f:
        f.write(INSTALL.format(py=args.python_version, platform=args.platform, d2=d2,
                               torch_note=torch_note))  # fmt: skip
    shutil.rmtree(col.built, ignore_errors=True)
    size = sum(os.path.getsize(p) for p in have.values()) / 2**20
    print(f"{len(have)} wheels, {size:.0f} MiB; install steps in "
          f"{os.path.join(args.dest, 'INSTALL.txt')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
