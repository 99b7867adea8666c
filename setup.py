"""PlainMamba for Detectron2."""

from setuptools import find_packages, setup

setup(
    name="plainmamba-detectron2",
    version="0.1.0",
    description="PlainMamba (arXiv 2403.17695) backbones, adapters and heads for Detectron2",
    packages=find_packages(include=["plainmamba", "plainmamba.*"]),
    # The LazyConfigs ship inside the package: plainmamba/model_zoo/configs links to configs/,
    # and its files are copied into wheels (read through importlib.resources).
    package_data={"plainmamba.model_zoo": ["configs/*.md", "configs/**/*.py"]},
    python_requires=">=3.9",
    # torch/torchvision and Detectron2 come from `make` (tools/setup_env.sh): torch from the build
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
        # depends on torch. tools/setup_env.sh installs the tested pins.
        "deploy": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
)
