"""Export PlainMamba models the Detectron2 way: TorchScript by tracing, and ONNX, on the CPU.

The command-line tool is ``tools/deploy/export_model.py``; docs/deploy.md says what each task
exports. Here are its parts:

- :func:`check_request` refuses unsupported format / method combinations and missing optional
  packages before any work;
- :func:`prepare_for_export` switches a model to the paths that trace into standard operators:
  the ``chunked`` selective scan and the reference deformable attention;
- :func:`export` traces a model (through Detectron2's ``TracingAdapter``) on one image and writes
  ``model.ts`` and / or ``model.onnx`` (and, on request, a detector's ``backbone_fpn.onnx``);
- :func:`run_torchscript`, :func:`run_onnx`, :func:`eager_outputs` and :func:`compare` load an
  exported file and check it against the eager model; :func:`benchmark` times them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "FORMATS",
    "PARTS",
    "METHODS",
    "ONNX_OPSET",
    "DEPLOY_PACKAGES",
    "ExportError",
    "ExportedFile",
    "check_request",
    "prepare_for_export",
    "generated_image",
    "read_image",
    "export",
    "run_torchscript",
    "run_onnx",
    "eager_outputs",
    "compare",
    "benchmark",
    "write_manifest",
    "INSTALL_HINT",
    "task_of",
]

FORMATS = ("torchscript", "onnx")
PARTS = ("model", "backbone_fpn")
METHODS = ("tracing", "scripting")
ONNX_OPSET = 17
# The optional packages of ONNX export (the ``deploy`` extra of setup.py, pinned in
# dev/setup_env.sh); torch's TorchScript-based exporter needs no others (no onnxscript).
DEPLOY_PACKAGES = {"onnx": "onnx==1.23.2", "onnxruntime": "onnxruntime==1.31.1"}
INSTALL_HINT = (
    "pip install -e .[deploy]  (or: pip install " + " ".join(DEPLOY_PACKAGES.values()) + ")"
)


class ExportError(RuntimeError):
    """A request the exporter refuses, or an export that failed; the message says why."""


@dataclass
class ExportedFile:
    """One written file: its format, what it holds, its input and output names, and the largest
    relative difference of each output from the eager model (filled by verification)."""

    path: str
    format: str
    part: str  # "model" (the whole model) or "backbone_fpn" (a detector's feature maps)
    inputs: List[str]
    outputs: List[str]
    input_size: Tuple[int, int]
    max_rel_diff: Dict[str, float] = field(default_factory=dict)


def task_of(model: nn.Module) -> str:
    """``classification``, ``segmentation`` or ``detection``."""
    from .analysis import task_of as _task_of

    return _task_of(model)


def check_request(formats: Sequence[str], method: str, parts: Sequence[str] = ("model",)) -> None:
    """Raise :class:`ExportError` for an unsupported format, method or part, or a missing
    package.

    Runs before any model is built, so that a wrong request costs nothing.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format must be among {', '.join(FORMATS)}; got {list(formats)}")
    if not parts or any(p not in PARTS for p in parts):
        raise ExportError(f"--parts must be among {', '.join(PARTS)}; got {list(parts)}")
    if "backbone_fpn" in parts and "onnx" not in formats:
        raise ExportError("--parts backbone_fpn is an ONNX export: add --format onnx")
    if method not in METHODS:
        raise ExportError(f"--export-method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "scripting":
        raise ExportError(
            "--export-method scripting is not supported for PlainMamba models: TorchScript's "
            "compiler cannot compile them (the operators choose their paths in Python, and shapes "
            "travel as tuples of varying length), and torch.jit.script is deprecated. Use "
            "--export-method tracing, which supports --format " + " and ".join(FORMATS)
        )
    if "onnx" in formats:
        missing = [name for name in DEPLOY_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ExportError(
                f"--format onnx needs the optional package(s) {', '.join(missing)}, which are not "
                f"installed; install them with: {INSTALL_HINT}"
            )


def prepare_for_export(model: nn.Module) -> Dict[str, int]:
    """Put ``model`` in eval mode on the exportable paths; returns how many modules changed.

    The selective scan goes to ``chunked`` (standard tensor ops; ``numba`` and ``triton`` are
    not traceable) on every module with ``set_scan_impl``, and the deformable attention to
    ``ref`` (``grid_sample``, ONNX ``GridSample``).
    """
    from .modeling.adapter import MSDeformAttn

    model.eval()
    counts = {"scan": 0, "deform_attn": 0}
    for module in model.modules():
        setter = getattr(module, "set_scan_impl", None)
        if callable(setter):
            setter("chunked")
            counts["scan"] += 1
        if isinstance(module, MSDeformAttn):
            module.impl = "ref"
            counts["deform_attn"] += 1
    return counts


def generated_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) uint8 RGB picture: a shaded background with a few filled shapes and noise,
    so that detectors see edges and regions rather than flat noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(40, 215, size=(2, 3))
    mix = (ys / max(height - 1, 1))[..., None]
    image = top * (1 - mix) + bottom * mix + 12 * np.sin(xs / 9.0)[..., None]
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        size = rng.uniform(0.08, 0.2) * min(height, width)
        colour = rng.uniform(0, 255, size=3)
        kind = rng.integers(3)
        if kind == 0:  # disc
            inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= size**2
        elif kind == 1:  # square
            inside = (np.abs(ys - cy) <= size) & (np.abs(xs - cx) <= size)
        else:  # triangle pointing up
            inside = (ys <= cy + size) & (np.abs(xs - cx) <= (ys - cy + size) / 2)
        image[inside] = colour
    image += rng.normal(0, 4, size=image.shape)
    return torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1).copy())


def read_image(path: str, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 RGB tensor, resized (bilinear) to ``size`` if given."""
    from PIL import Image

    if not os.path.isfile(path):
        raise ExportError(f"--sample-image {path!r} does not exist")
    try:
        image = Image.open(path).convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises several types
        raise ExportError(f"cannot read --sample-image {path!r}: {err}") from err
    if size is not None:
        image = image.resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


class _FeatureMaps(nn.Module):
    """A detector's normalisation, padding, backbone and FPN: image -> feature maps (sorted)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        images = self.detector.preprocess_image([{"image": image}])
        features = self.detector.backbone(images.tensor)
        return tuple(features[name] for name in sorted(features))


def _rcnn_inference(model: nn.Module, inputs: List[Dict[str, torch.Tensor]]) -> Any:
    # As Detectron2's export_model.py: boxes in the input image's frame and 28 x 28 mask
    # probabilities per box; detector_postprocess pastes them (docs/deploy.md).
    instances = model.inference(inputs, do_postprocess=False)[0]
    return [{"instances": instances}]


def _schema_names(schema: Any, prefix: str = "") -> List[str]:
    """Output names in the order Detectron2's flattening lays the tensors out."""
    from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema

    if isinstance(schema, InstancesSchema):
        names = [n for key, s in zip(schema.keys, schema.schemas) for n in _schema_names(s, key)]
        return names + ["image_size"]
    if isinstance(schema, DictSchema):
        return [n for key, s in zip(schema.keys, schema.schemas) for n in _schema_names(s, key)]
    if isinstance(schema, ListSchema):
        if len(schema.schemas) == 1:
            return _schema_names(schema.schemas[0], prefix)
        return [
            n
            for i, s in enumerate(schema.schemas)
            for n in _schema_names(s, f"{prefix}{i}" if not prefix else f"{prefix}_{i}")
        ]
    return [prefix or "output"]


def _traceable(model: nn.Module, image: torch.Tensor, part: str) -> Tuple[nn.Module, List[str]]:
    """The module to trace (taking the image tensor) and the names of its flat outputs."""
    from detectron2.export import TracingAdapter
    from detectron2.modeling import GeneralizedRCNN

    if part == "backbone_fpn":
        wrapper = _FeatureMaps(model).eval()
        with torch.no_grad():
            names = sorted(model.backbone(model.preprocess_image([{"image": image}]).tensor))
        return wrapper, list(names)
    inference = _rcnn_inference if isinstance(model, GeneralizedRCNN) else None
    # In eval mode itself: torch.onnx.export restores the wrapper's mode, recursively, after it.
    adapter = TracingAdapter(model, [{"image": image}], inference).eval()
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)  # records outputs_schema
    return adapter, _schema_names(adapter.outputs_schema)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    with warnings.catch_warnings():
        # Shape checks and Python branches that the trace records as constants: an export is for
        # one input size, which docs/deploy.md states.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        yield


def export(
    model: nn.Module,
    image: torch.Tensor,
    formats: Sequence[str],
    output_dir: str,
    parts: Sequence[str] = ("model",),
    log: Callable[[str], None] = print,
) -> List[ExportedFile]:
    """Trace ``model`` (prepared by :func:`prepare_for_export`) on ``image`` and write each format.

    Every task exports whole (image in; ``logits``, ``sem_seg``, or the detections out) to
    ``model.ts`` and ``model.onnx``. Detectors, as Detectron2's exporter, stop before
    ``detector_postprocess``: boxes in the input image's frame and 28 x 28 mask probabilities per
    box. With ``"backbone_fpn"`` in ``parts``, a detector's ONNX export also writes
    ``backbone_fpn.onnx`` (image in, FPN maps out).
    """
    os.makedirs(output_dir, exist_ok=True)
    task = task_of(model)
    size = (int(image.shape[-2]), int(image.shape[-1]))
    written: List[ExportedFile] = []
    with _quiet_tracing():
        for part in PARTS:
            if part not in parts or (part == "backbone_fpn" and task != "detection"):
                continue
            module, outputs = _traceable(model, image, part)
            # One trace serves both formats: the ONNX exporter converts the traced graph.
            with torch.no_grad():
                traced = torch.jit.trace(module, (image,), check_trace=False)
            for fmt in formats:
                if part == "backbone_fpn" and fmt != "onnx":
                    continue
                if fmt == "torchscript":
                    path = os.path.join(output_dir, f"{part}.ts")
                    traced.save(path)
                else:
                    path = os.path.join(output_dir, f"{part}.onnx")
                    with torch.no_grad():
                        torch.onnx.export(
                            traced,
                            (image,),
                            path,
                            input_names=["image"],
                            output_names=outputs,
                            opset_version=ONNX_OPSET,
                            dynamo=False,
                        )
                    import onnx

                    onnx.checker.check_model(path)
                written.append(ExportedFile(path, fmt, part, ["image"], outputs, size))
                log(f"wrote {path} ({fmt}, {part}, {size[0]}x{size[1]} input, outputs: "
                    f"{', '.join(outputs)})")  # fmt: skip
    return written


def run_torchscript(path: str, image: torch.Tensor) -> List[np.ndarray]:
    """Load a TorchScript file and run it on ``image``; flat outputs as numpy arrays."""
    module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        outputs = module(image)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [o.detach().cpu().numpy() for o in outputs]


def run_onnx(path: str, image: torch.Tensor, threads: Optional[int] = None) -> List[np.ndarray]:
    """Load an ONNX file into ONNX Runtime (CPU provider) and run it on ``image``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: image.numpy()}))


def _set_paths(model: nn.Module, scan: Optional[str], deform_attn: Optional[str]) -> None:
    from .modeling.adapter import MSDeformAttn

    for module in model.modules():
        if callable(getattr(module, "set_scan_impl", None)):
            module.set_scan_impl(scan)
        if isinstance(module, MSDeformAttn):
            module.impl = deform_attn


def eager_outputs(
    model: nn.Module, image: torch.Tensor, part: str, default_paths: bool = True
) -> List[np.ndarray]:
    """The eager model's flat outputs for ``image``, in the exported file's order.

    With ``default_paths`` the model runs on the paths it uses without export (``auto``: the
    ``numba`` scan on the CPU) and is put back on the export paths afterwards.
    """
    module, _ = _traceable(model, image, part)
    if default_paths:
        _set_paths(model, None, None)
    try:
        with torch.no_grad():
            outputs = module(image)
    finally:
        if default_paths:
            prepare_for_export(model)
    return [o.detach().cpu().numpy() for o in outputs]


def compare(got: Sequence[np.ndarray], want: Sequence[np.ndarray], names: Sequence[str]) -> Dict:
    """Largest ``|got - want| / max|want|`` per output; raises :class:`ExportError` when the
    outputs differ in number or shape (a detector that kept other boxes)."""
    if len(got) != len(want):
        raise ExportError(f"exported model gave {len(got)} outputs, eager {len(want)}")
    diffs = {}
    for name, a, b in zip(names, got, want):
        if tuple(a.shape) != tuple(b.shape):
            raise ExportError(
                f"output {name!r}: exported shape {tuple(a.shape)}, eager {tuple(b.shape)}"
            )
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = float(np.abs(b64).max()) if b64.size else 0.0
        diff = float(np.abs(a64 - b64).max()) if b64.size else 0.0
        diffs[name] = diff / scale if scale > 0 else diff
    return diffs


def benchmark(
    model: nn.Module,
    image: torch.Tensor,
    files: Sequence[ExportedFile],
    iters: int,
    scan_impls: Sequence[str] = ("numba", "chunked"),
    threads: Optional[int] = None,
) -> List[Tuple[str, float]]:
    """Median milliseconds per call of the eager model (once per scan path) and of each exported
    file on ``image``, round-robin so that machine noise hits them alike; two warm-up calls each.
    ``threads`` sets both PyTorch's and ONNX Runtime's intra-op threads (default: their own).

    The eager model is left on the ``chunked`` path afterwards.
    """
    import time

    from .ops import available_impls

    module, _ = _traceable(model, image, "model")
    runners: List[Tuple[str, Callable[[], Any]]] = []
    for impl in scan_impls:
        if impl not in available_impls():
            continue

        def eager(impl: str = impl) -> Any:
            _set_paths(model, impl, "ref")
            return module(image)

        runners.append((f"eager PyTorch, {impl} scan", eager))
    for item in files:
        if item.part != "model":
            continue
        if item.format == "torchscript":
            loaded = torch.jit.load(item.path, map_location="cpu")
            runners.append(
                (f"TorchScript {os.path.basename(item.path)}", lambda m=loaded: m(image))
            )
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = ort.InferenceSession(item.path, options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: image.numpy()}
            runners.append(
                (f"ONNX Runtime {os.path.basename(item.path)}", lambda s=session: s.run(None, feed))
            )
    if threads:
        torch.set_num_threads(threads)
    times: Dict[str, List[float]] = {name: [] for name, _ in runners}
    with torch.no_grad():
        for round_ in range(iters + 2):
            for name, fn in runners:
                start = time.perf_counter()
                fn()
                if round_ >= 2:
                    times[name].append((time.perf_counter() - start) * 1e3)
    prepare_for_export(model)
    return [(name, float(np.median(times[name]))) for name, _ in runners]


def write_manifest(files: Sequence[ExportedFile], output_dir: str, extra: Dict[str, Any]) -> str:
    """``export.json`` beside the files: what was exported, its inputs, outputs and checks."""
    path = os.path.join(output_dir, "export.json")
    with open(path, "w") as f:
        json.dump({**extra, "files": [asdict(x) for x in files]}, f, indent=2)
    return path
