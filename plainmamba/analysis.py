"""FLOP, activation and parameter counts of PlainMamba models with fvcore, scan included.

fvcore counts by tracing the model with ``torch.jit`` and mapping each traced operator to a
handle. Two operators of this project have no aten equivalent that fvcore understands:

- the zig-zag selective scan (:func:`plainmamba.ops.zigzag_scan`): its CPU path runs Numba kernels
  on NumPy views, which the tracer does not see at all; its CUDA paths are extension calls;
- multi-scale deformable attention (:func:`plainmamba.ops.ms_deform_attn`): ``grid_sample`` per
  level plus a weighted sum that fvcore would drop as element-wise.

:func:`countable_ops` routes both through one registered custom op each while a model is
analysed, whatever path is selected. The tracer records such a call as a single node
``plainmamba::zigzag_scan`` / ``plainmamba::ms_deform_attn`` with the input shapes, and
:data:`FLOP_HANDLES` counts them:

- scan, per batch element, per step (token) and per direction (4), with E channels and N states.
  ``released`` (default): 9 E N + E, the count of the released ``get_flops.py`` (Mamba issue
  #110: 9 flops per channel and state for discretisation, recurrence and output, plus D * u).
  The published GFLOPs use it, so it is the one to compare with them. ``mac``: multiply-adds
  only: exp(delta A) as 2 (the product and the exp), delta B u as 1, the state update
  h = a h + b as 1 and the output contraction h . C as 1, so 5 E N, plus delta u and D u as 2 E;
  the softplus of delta (shared by the four directions) adds E per step.
- deformable attention, per query, head, level, point and value channel: 5 (bilinear sampling
  as 4 multiply-adds over the neighbours, then 1 for the attention weight).

Everything else follows fvcore: one multiply-add counts as one flop (convolutions, linear layers,
matmuls), norms and upsampling as fvcore's handles say, element-wise operators are not counted.
:func:`flop_count` reports any operator that was neither counted nor on the list of element-wise
operators (:data:`NEGLIGIBLE_OPS`) and raises if a scan or deformable attention that the model
contains was not counted.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    "FLOP_HANDLES",
    "ACTIVATION_HANDLES",
    "NEGLIGIBLE_OPS",
    "SCAN_CONVENTIONS",
    "ScanConvention",
    "FlopReport",
    "countable_ops",
    "flop_count",
    "activation_count",
    "flop_handles",
    "scan_flops",
    "msda_flops",
    "make_inputs",
    "count_parameters",
    "task_of",
    "summarize",
]

logger = logging.getLogger(__name__)

# The registered custom ops that the dispatchers call under countable_ops().
SCAN_OP = "plainmamba::zigzag_scan"
MSDA_OP = "plainmamba::ms_deform_attn"
DIRECTIONS = 4
# Bilinear sampling: four neighbours weighted and summed; then one multiply-add for the weight.
MSDA_FLOPS_PER_SAMPLE = 5


@dataclass(frozen=True)
class ScanConvention:
    """How one step of one scan direction is counted.

    ``per_state`` flops per (channel, state), ``per_channel`` per channel, both for each of the
    four directions; ``per_channel_once`` per channel and step, shared by the directions.
    """

    name: str
    per_state: int
    per_channel: int
    per_channel_once: int


SCAN_CONVENTIONS: Dict[str, ScanConvention] = {
    "released": ScanConvention("released", per_state=9, per_channel=1, per_channel_once=0),
    "mac": ScanConvention("mac", per_state=5, per_channel=2, per_channel_once=1),
}


def scan_flops(
    batch: int, length: int, channels: int, states: int, convention: str = "released"
) -> int:
    """Flops of one four-direction zig-zag scan over ``length`` tokens (see the module doc)."""
    conv = SCAN_CONVENTIONS[convention]
    per_step = DIRECTIONS * (conv.per_state * channels * states + conv.per_channel * channels)
    per_step += conv.per_channel_once * channels
    return int(batch * length * per_step)


def msda_flops(batch: int, queries: int, heads: int, levels: int, points: int, dim: int) -> int:
    """Flops of multi-scale deformable attention: sampling and weighting of every point."""
    return int(batch * queries * heads * levels * points * dim * MSDA_FLOPS_PER_SAMPLE)


def _shape(value: Any) -> List[int]:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    if shape is None:
        raise RuntimeError("flop count: an input of a counted operator has no static shape")
    return list(shape)


def _scan_handle(convention: str):
    def handle(inputs: List[Any], outputs: List[Any]) -> Counter:
        batch, length, channels = _shape(inputs[0])  # u
        states = _shape(inputs[2])[1]  # A: (E, N)
        return Counter({"zigzag_scan": scan_flops(batch, length, channels, states, convention)})

    return handle


def _msda_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    # plainmamba::ms_deform_attn(value, sampling_locations, attention_weights, shapes, impl)
    batch, _, heads, dim = _shape(inputs[0])  # value: (B, S, heads, head_dim)
    _, queries, _, levels, points, _ = _shape(inputs[1])  # sampling locations
    return Counter({"ms_deform_attn": msda_flops(batch, queries, heads, levels, points, dim)})


def _roi_align_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    # One bilinear sample (4 multiply-adds) per output cell and sampling point. Detectron2's
    # poolers use an adaptive grid (sampling_ratio 0) that depends on the boxes; 2 x 2 assumed.
    out = _shape(outputs[0])
    numel = 1
    for s in out:
        numel *= s
    return Counter({"roi_align": numel * 4 * 4})


def _bicubic_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    out = _shape(outputs[0])
    numel = 1
    for s in out:
        numel *= s
    return Counter({"upsample_bicubic2d": numel * 16})  # 4 x 4 taps per output value


def flop_handles(convention: str = "released") -> Dict[str, Any]:
    """fvcore op handles for this project's operators, with the scan counted by ``convention``."""
    if convention not in SCAN_CONVENTIONS:
        raise ValueError(
            f"unknown scan flop convention {convention!r}; choose one of {sorted(SCAN_CONVENTIONS)}"
        )
    return {
        SCAN_OP: _scan_handle(convention),
        MSDA_OP: _msda_handle,
        "torchvision::roi_align": _roi_align_handle,
        "aten::upsample_bicubic2d": _bicubic_handle,
    }


#: Handles to pass to ``fvcore.nn.FlopCountAnalysis.set_op_handle`` (``released`` convention).
FLOP_HANDLES: Dict[str, Any] = flop_handles("released")


def _output_numel(inputs: List[Any], outputs: List[Any]) -> int:
    numel = 1
    for s in _shape(outputs[0]):
        numel *= s
    return numel


#: Handles for ``fvcore.nn.ActivationCountAnalysis``: each op's output size.
ACTIVATION_HANDLES: Dict[str, Any] = {SCAN_OP: _output_numel, MSDA_OP: _output_numel}

#: Operators left uncounted on purpose: element-wise arithmetic, activations, reductions, data
#: movement, indexing and box post-processing; fvcore does not count them either.
NEGLIGIBLE_OPS = frozenset(
    "aten::" + name
    for name in (
        "abs add add_ addcmul all any argmax argsort bitwise_and bitwise_or ceil clone cos cumsum "
        "div div_ exp exp_ expand_as fill_ floor_divide gelu gelu_ hardtanh index_select "
        "index_add lerp log log2 log_softmax logical_and logical_not lt le max max_pool2d "
        "maximum mean meshgrid min minimum mul mul_ ne neg nonzero_numpy norm pow reciprocal "
        "relu repeat repeat_interleave round rsqrt rsub scatter scatter_add sigmoid sigmoid_ "
        "silu silu_ sin softmax softplus sort sqrt square sub sub_ sum tanh topk where "
        "masked_select new_ones ones_like rand randn linspace scalar_tensor tensor bitwise_xor "
        "sign unflatten view_as expand_as flip index_fill_ resolve_conj resolve_neg lift_fresh "
        "_unsafe_view to zeros_like empty_like clamp_min clamp_max pad dropout feature_dropout"
    ).split()
) | frozenset(
    {
        "torchvision::nms",
        # TorchScript helpers that Detectron2 calls while tracing: box decoding, pooler level
        # assignment, batched NMS and mask pasting (post-processing, not counted by convention).
        "prim::CallFunction",
    }
)


@contextlib.contextmanager
def countable_ops() -> Iterator[None]:
    """Within the block, every scan and deformable attention of this package is one traced node.

    The dispatchers (:func:`plainmamba.ops.zigzag_scan`, :func:`plainmamba.ops.ms_deform_attn`)
    then call the registered custom ops ``plainmamba::zigzag_scan`` and
    ``plainmamba::ms_deform_attn``, whatever path is selected; the handles of this module are
    keyed on those names. Nothing is patched. The ops have no backward: for analysis only.
    """
    from .ops.switch import counting_ops

    with counting_ops():
        yield


def _count_modules(model: nn.Module) -> Tuple[int, int]:
    from .modeling.adapter import MSDeformAttn
    from .modeling.plainmamba import PlainMambaMixer

    mixers = sum(isinstance(m, PlainMambaMixer) for m in model.modules())
    attns = sum(isinstance(m, MSDeformAttn) for m in model.modules())
    return mixers, attns


@dataclass
class FlopReport:
    """Result of :func:`flop_count`; flops follow fvcore (one multiply-add is one flop)."""

    total: int
    by_operator: Dict[str, int]
    by_module: Dict[str, int]
    unsupported: Dict[str, int]
    skipped_negligible: Dict[str, int]
    convention: str
    analysis: Any = field(repr=False, default=None)

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def table(self, max_depth: int = 3) -> str:
        """fvcore's per-module table (flops and parameters)."""
        from fvcore.nn import flop_count_table

        return flop_count_table(self.analysis, max_depth=max_depth)


def _traceable(model: nn.Module, inputs: Any) -> Tuple[nn.Module, Tuple[Any, ...]]:
    """A module and a tuple of tensors for the tracer: Detectron2 dict inputs are flattened."""
    if torch.is_tensor(inputs):
        return model, (inputs,)
    if isinstance(inputs, tuple) and all(torch.is_tensor(t) for t in inputs):
        return model, inputs
    from detectron2.export import TracingAdapter

    adapter = TracingAdapter(model, inputs, allow_non_tensor=True)
    return adapter, adapter.flattened_inputs


def _split_skipped(analysis: Any) -> Tuple[Dict[str, int], Dict[str, int]]:
    unsupported = dict(analysis.unsupported_ops())
    negligible = {k: v for k, v in unsupported.items() if k in NEGLIGIBLE_OPS}
    important = {k: v for k, v in unsupported.items() if k not in NEGLIGIBLE_OPS}
    return important, negligible


def flop_count(
    model: nn.Module,
    inputs: Any,
    convention: str = "released",
    strict: bool = False,
) -> FlopReport:
    """Count the flops of one forward pass of ``model`` on ``inputs``.

    Args:
        model: any module of this project (trunk, classifier, detector, segmentor); it is
            traced as it is (train or eval mode), under ``torch.no_grad``.
        inputs: a tensor, a tuple of tensors or Detectron2-style ``list[dict]`` inputs.
        convention: how the scan is counted (``released`` or ``mac``, see the module doc).
        strict: raise if an operator outside :data:`NEGLIGIBLE_OPS` was not counted (otherwise
            it is logged as a warning and listed in ``FlopReport.unsupported``).

    Raises:
        RuntimeError: if the model has PlainMamba mixers or deformable attentions and the
            trace shows no counted scan or attention (their flops would be silently lost).
    """
    from fvcore.nn import FlopCountAnalysis

    module, args = _traceable(model, inputs)
    with countable_ops(), torch.no_grad():
        analysis = FlopCountAnalysis(module, args)
        analysis.set_op_handle(**flop_handles(convention))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
    by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
    mixers, attns = _count_modules(model)
    if mixers and not by_operator.get("zigzag_scan"):
        raise RuntimeError(
            f"flop count: the model has {mixers} PlainMamba mixers but no selective scan was "
            f"counted; the scan call no longer goes through plainmamba.ops.zigzag_scan"
        )
    if attns and not by_operator.get("ms_deform_attn"):
        raise RuntimeError(
            f"flop count: the model has {attns} deformable attentions but none was counted; "
            f"the call no longer goes through plainmamba.ops.ms_deform_attn"
        )
    important, negligible = _split_skipped(analysis)
    if important:
        message = "flop count: operators NOT counted (their flops are missing from the total): " + (
            ", ".join(f"{k} x{v}" for k, v in sorted(important.items()))
        )
        if strict:
            raise RuntimeError(message)
        logger.warning(message)
    by_module = {k: int(v) for k, v in analysis.by_module().items()}
    return FlopReport(
        total=total,
        by_operator=by_operator,
        by_module=by_module,
        unsupported=important,
        skipped_negligible=negligible,
        convention=convention,
        analysis=analysis,
    )


def activation_count(model: nn.Module, inputs: Any) -> Tuple[int, Dict[str, int], Dict[str, int]]:
    """fvcore's activation count (outputs of convolutions, linear layers, matmuls, the scan and
    the deformable attention). Returns ``(total, by_operator, uncounted_operators)``."""
    from fvcore.nn import ActivationCountAnalysis

    module, args = _traceable(model, inputs)
    with countable_ops(), torch.no_grad():
        analysis = ActivationCountAnalysis(module, args)
        analysis.set_op_handle(**ACTIVATION_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
    important, _ = _split_skipped(analysis)
    return total, {k: int(v) for k, v in analysis.by_operator().items()}, important


def make_inputs(
    model: nn.Module, height: int, width: int, num: int = 1, seed: int = 0
) -> List[Dict[str, Any]]:
    """``num`` generated Detectron2 inputs of ``height`` x ``width`` for ``model``.

    Classifiers and segmentors take RGB 0-255 images; detectors also get ``height``/``width``
    (the size to predict at, here the input size). Pixels are uniform noise from ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
        record: Dict[str, Any] = {"image": image.float()}
        if not _is_classifier(model):
            record.update(height=height, width=width)
        out.append(record)
    return out


def _is_classifier(model: nn.Module) -> bool:
    from .modeling.classifier import ImageClassifier

    return isinstance(model, ImageClassifier)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def task_of(model: nn.Module) -> str:
    """``classification``, ``segmentation`` or ``detection`` (any other Detectron2 model)."""
    from .modeling.segmentation import EncoderDecoderSegmentor

    if _is_classifier(model):
        return "classification"
    if isinstance(model, EncoderDecoderSegmentor):
        return "segmentation"
    return "detection"


def summarize(reports: Sequence[FlopReport]) -> Mapping[str, float]:
    """Mean total and per-operator flops over several inputs (detector costs vary by input)."""
    n = max(1, len(reports))
    ops: Counter = Counter()
    for r in reports:
        ops.update(r.by_operator)
    return {
        "total": sum(r.total for r in reports) / n,
        **{k: v / n for k, v in sorted(ops.items(), key=lambda kv: -kv[1])},
    }
