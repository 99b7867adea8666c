"""PlainMamba for Detectron2."""

import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def link_model_zoo_configs() -> None:
    """Make ``plainmamba/model_zoo/configs`` point at the repository's ``configs/``.

    As Detectron2's setup.py does: the link is a build product (ignored by git), made on every
    install or build from a checkout, so that an editable install reads ``configs/`` in place and
    a wheel copies the files in as package data. Where links cannot be made, a copy stands in.
    In an unpacked sdist there is no ``configs/``; the copy shipped there is kept.
    """
    source = os.path.join(HERE, "configs")
    dest = os.path.join(HERE, "plainmamba", "model_zoo", "configs")
    if not os.path.isdir(source):
        return
    if os.path.islink(dest):
        if os.path.realpath(dest) == os.path.realpath(source):
            return
        os.unlink(dest)
    elif os.path.isdir(dest):
        shutil.rmtree(dest)  # a stale copy from a machine without links
    try:
        os.symlink(os.path.relpath(source, os.path.dirname(dest)), dest)
    except OSError:
        shutil.copytree(source, dest)


link_model_zoo_configs()

setup(
    name="plainmamba-detectron2",
    version="0.1.0",
    description="PlainMamba (arXiv 2403.17695) backbones, adapters and heads for Detectron2",
    packages=find_packages(include=["plainmamba", "plainmamba.*"]),
    # The LazyConfigs ship inside the package: plainmamba/model_zoo/configs links to configs/
    # (link_model_zoo_configs), and its files are copied into wheels (read through
    # importlib.resources).
    package_data={"plainmamba.model_zoo": ["configs/*.md", "configs/**/*.py"]},
    python_requires=">=3.9",
    # torch/torchvision and Detectron2 come from `make` (dev/setup_env.sh): torch from the build
    # on local disk or the user's own, Detectron2 from a source build or the sal-detectron2 wheel.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numba>=0.59",
        "numpy",
        "timm>=0.9",
        "fvcore",
        "iopath",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "pycocotools>=2.0.2",
        "termcolor",
        "yacs",
        "tabulate",
        "cloudpickle",
        "tqdm",
        "matplotlib",
        "tensorboard",  # Detectron2's TensorboardXWriter (torch.utils.tensorboard)
        "Pillow",
        "lmdb",  # ImageNet in LMDB form (tools/create_lmdb_dataset.py)
        "opencv-python-headless",  # Detectron2's Visualizer draws polygons with cv2
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
    ],
    extras_require={
        "dev": ["pytest>=7", "black"],
        # ONNX export and its check in ONNX Runtime (tools/deploy/export_model.py); neither
        # depends on torch. dev/setup_env.sh installs the tested pins.
        "deploy": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
)
