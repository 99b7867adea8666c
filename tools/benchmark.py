#!/usr/bin/env python
"""Speed and memory of PlainMamba models: inference and training, CPU or GPU, per scan path.

    python tools/benchmark.py                    # L1 beside DeiT-Tiny: CPU, 224, batch 1, 2 threads
    python tools/benchmark.py --device cuda --model trunk --mode inference train \\
        --resolutions 224 512 1024 --batch-sizes 1 32 --scan-impl ref mamba triton --amp bf16 \\
        --json output/bench.json --plot output/bench.png
    python tools/benchmark.py --config-file COCO/mask_rcnn_plainmamba_adapter_l1_1x.py \\
        --resolutions 800x1280 --mode inference

``--model full`` times the config's model (classifiers: trunk and head on a normalised batch;
detectors and segmentors: the Detectron2 model on a list of image dicts, post-processing
included, with generated boxes, masks or label maps in training), ``--model trunk`` only the
PlainMamba trunk (``model.backbone``, or ``model.backbone.bottom_up.trunk`` in a detector).
``--mode train`` is forward, backward and an AdamW step. Each scan path named by ``--scan-impl``
is set on every PlainMamba module; a path that cannot run here is reported and skipped. The
figure is the median over ``--iters`` timed iterations after ``--warmup``; in inference all
paths (and DeiT-Tiny with ``--compare-deit``) run round-robin so that machine noise hits them
alike. Peak memory comes from one extra iteration: on CUDA ``torch.cuda.max_memory_allocated``;
on the CPU the process's peak resident set (Linux ``VmHWM``, reset before that iteration), which
includes the weights and the libraries (the resident set before it is ``base_mem_mib``).

The report (printed and in the JSON's ``ops``) names the Triton kernels' tuning in use and every
``PLAINMAMBA_*`` override variable that was set (docs/ops.md#configuration).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from plainmamba.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()  # before Detectron2 and timm are imported

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "ImageNet", "plainmamba_l1_300e.py")
DEIT = "deit_tiny_patch16_224"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compiled(module: torch.nn.Module, mode: Optional[str]) -> Any:
    """``module`` itself (mode None) or ``torch.compile(module)`` in ``mode``."""
    if mode is None:
        return module
    return torch.compile(module, mode=None if mode == "default" else mode)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--config-file", default=DEFAULT_CONFIG, help="config path or model-zoo name")
    add("--model", choices=("full", "trunk"), default="full")
    add("--mode", nargs="+", choices=("inference", "train"), default=["inference"])
    add("--device", choices=("cpu", "cuda"), default="cpu")
    add("--amp", choices=tuple(AMP_DTYPES), default="none", help="torch.autocast precision")
    add(
        "--batch-sizes", "--batch", nargs="+", type=int, default=[1], dest="batch_sizes",
        help="batch sizes (--batch is the old name)",
    )  # fmt: skip
    add(
        "--resolutions", "--sizes", nargs="+", default=["224"], dest="resolutions",
        help="square sides (224) or HxW (800x1280); --sizes is the old name",
    )  # fmt: skip
    add(
        "--scan-impl", "--scan", nargs="+", default=None, dest="scan_impls",
        help="scan paths to time (default: numba on CPU, auto on CUDA); --scan is the old name",
    )  # fmt: skip
    add("--warmup", type=int, default=5)
    add("--iters", type=int, default=30)
    add("--threads", type=int, default=None, help="torch CPU threads (default: 2 on CPU)")
    add(
        "--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
        help="torch.compile the timed function; optional mode (reduce-overhead: CUDA graphs)",
    )  # fmt: skip
    add(
        "--compare-deit", action=argparse.BooleanOptionalAction, default=None,
        help="also time timm's DeiT-Tiny at 224 (default: on for CPU inference of a classifier)",
    )  # fmt: skip
    add(
        "--no-deit", action="store_false", dest="compare_deit", default=None,
        help="same as --no-compare-deit",
    )  # fmt: skip
    add(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE",
        help="LazyConfig overrides, e.g. model.backbone.depth=4",
    )  # fmt: skip
    add("--json", default=None, help="write the results here")
    add("--plot", default=None, help="PNG of time and memory against resolution")
    return parser


def parse_resolution(text: str) -> Tuple[int, int]:
    """``224`` -> (224, 224); ``800x1280`` -> (800, 1280)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"resolution {text!r}: expected N or HxW")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


# ---------------------------------------------------------------------------------------------
# Memory


def _read_status_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryProbe:
    """Peak memory of one measured call: CUDA allocator peak, or the process's peak RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else self._cpu_kind()

    @staticmethod
    def _cpu_kind() -> str:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (Linux >= 4.0)
            return "rss_peak_reset"
        except OSError:
            return "ru_maxrss_process_lifetime"

    def start(self) -> float:
        """Reset the peak; returns the current memory in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        if self.kind == "rss_peak_reset":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        rss = _read_status_kib("VmRSS")
        return rss / 1024 if rss else float("nan")

    def peak(self) -> float:
        """Peak MiB since :meth:`start`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "rss_peak_reset":
            hwm = _read_status_kib("VmHWM")
            if hwm:
                return hwm / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Models and the functions that are timed


def load_config(config_file: str, opts: Sequence[str] = ()):
    """The config of a path or model-zoo name, with ``key=value`` overrides (keys must exist)."""
    from detectron2.config import LazyConfig

    from plainmamba import model_zoo
    from plainmamba.engine import apply_overrides

    if os.path.isfile(config_file):
        cfg = LazyConfig.load(config_file)
    else:
        cfg = model_zoo.get_config(config_file)
    return apply_overrides(cfg, list(opts), source=config_file)


def plainmamba_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    """Every PlainMamba trunk inside ``model`` (the classifier's, the adapter's, ...)."""
    from plainmamba.modeling import PlainMamba

    return [m for m in model.modules() if isinstance(m, PlainMamba)]


def set_scan_impl(model: torch.nn.Module, impl: str) -> int:
    """Select ``impl`` on every module that has ``set_scan_impl``; returns how many."""
    count = 0
    for module in model.modules():
        setter = getattr(module, "set_scan_impl", None)
        if callable(setter):
            setter(impl)
            count += 1
    return count


def check_scan_impl(impl: str, device: torch.device) -> Tuple[Optional[str], Optional[str]]:
    """``(path it resolves to, None)`` if ``impl`` can run on ``device``, else
    ``(None, the reason it cannot)``."""
    from plainmamba.ops import resolve_impl

    try:
        return resolve_impl(impl, device), None
    except (ValueError, RuntimeError, ImportError) as err:
        return None, str(err)


def _generated_instances(height: int, width: int, classes: int, masks: bool, gen, device):
    from detectron2.structures import BitMasks, Boxes, Instances

    count = 4
    x0 = torch.rand(count, generator=gen) * width * 0.6
    y0 = torch.rand(count, generator=gen) * height * 0.6
    w = (0.15 + 0.25 * torch.rand(count, generator=gen)) * width
    h = (0.15 + 0.25 * torch.rand(count, generator=gen)) * height
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], 1)
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, max(1, classes), (count,), generator=gen)
    if masks:
        grid = torch.zeros(count, height, width, dtype=torch.bool)
        for i, (a, b, c, d) in enumerate(boxes.round().long().tolist()):
            grid[i, b:d, a:c] = True
        inst.gt_masks = BitMasks(grid)
    return inst.to(device)


@dataclass
class Runner:
    """One timed configuration: a name, the step to time and its metadata."""

    name: str
    impl: str
    step: Callable[[], Any]
    train: bool
    extra: Dict[str, Any] = field(default_factory=dict)


def make_step(
    model: torch.nn.Module,
    kind: str,
    which: str,
    train: bool,
    batch: int,
    hw: Tuple[int, int],
    device: torch.device,
    amp: Optional[torch.dtype],
    compile_mode: Optional[str],
) -> Callable[[], Any]:
    """The function timed for one iteration (its inputs are made once, here)."""
    from plainmamba.modeling import PIXEL_MEAN, PIXEL_STD

    height, width = hw
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=gen).float()
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    normalised = ((images - mean) / std).to(device)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp))
        if amp is not None
        else contextlib.nullcontext
    )

    if which == "trunk" or kind == "classification":
        if which == "trunk":
            forward_module: torch.nn.Module = model
        else:
            head = model

            class _ClsForward(torch.nn.Module):
                """Trunk and head on a normalised batch (no per-image list handling)."""

                def __init__(self):
                    super().__init__()
                    self.model = head

                def forward(self, x):
                    return self.model.head(self.model.backbone.forward_features(x)[0])

            forward_module = _ClsForward()
        fn = compiled(forward_module, compile_mode)
        labels = torch.randint(0, 10, (batch,), generator=gen).to(device)

        def forward():
            with autocast():
                return fn(normalised)

        def loss_of(out):
            if isinstance(out, dict):
                return sum(v.float().mean() for v in out.values())
            return torch.nn.functional.cross_entropy(out.float(), labels)

    else:
        records = []
        for i in range(batch):
            record: Dict[str, Any] = {
                "image": images[i].to(device),
                "height": height,
                "width": width,
            }
            if train and kind == "detection":
                classes = getattr(getattr(model, "roi_heads", None), "num_classes", None)
                classes = classes or getattr(model, "num_classes", 1)
                masks = bool(getattr(getattr(model, "roi_heads", None), "mask_on", False))
                record["instances"] = _generated_instances(
                    height, width, classes, masks, gen, device
                )
            if train and kind == "segmentation":
                classes = model.decode_head.num_classes
                record["sem_seg"] = torch.randint(0, classes, (height, width), generator=gen).to(
                    device
                )
            records.append(record)
        fn = compiled(model, compile_mode)
        from detectron2.utils.events import EventStorage

        storage = EventStorage(0)  # Detectron2's training heads log into one

        def forward():
            with autocast(), storage:
                return fn(records)

        def loss_of(out):
            return sum(v for v in out.values())

    if not train:
        model.eval()

        def infer():
            # no_grad, not inference_mode: the scan-order and reference-point caches would keep
            # inference tensors, which a later training step in this process cannot use.
            with torch.no_grad():
                return forward()

        return infer

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(forward())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss

    return train_step


# ---------------------------------------------------------------------------------------------
# Timing


class Timer:
    """Milliseconds of one call: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def time_runners(
    runners: Sequence[Runner], warmup: int, iters: int, timer: Timer, round_robin: bool
) -> Dict[str, Any]:
    """Median ms per call of each runner (``Exception`` instead for one that failed)."""
    samples: Dict[str, Any] = {r.name: [] for r in runners}
    alive = list(runners)

    def call(runner: Runner, timed: bool) -> None:
        try:
            ms = timer(runner.step)
        except Exception as err:  # noqa: BLE001 - OOM or a path failing at run time: record it
            samples[runner.name] = err
            alive.remove(runner)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        if timed:
            samples[runner.name].append(ms)

    if round_robin:
        for i in range(warmup + iters):
            for runner in list(alive):
                call(runner, i >= warmup)
    else:
        for runner in runners:
            for i in range(warmup + iters):
                if runner not in alive:
                    break
                call(runner, i >= warmup)
    return {
        name: (statistics.median(s) if isinstance(s, list) and s else s)
        for name, s in samples.items()
    }


def measure_memory(runner: Runner, probe: MemoryProbe) -> Tuple[float, float]:
    """(resident or allocated MiB before, peak MiB during) one more call of ``runner``."""
    base = probe.start()
    runner.step()
    # The kernel updates VmHWM lazily, so it can read a little below the VmRSS read at start;
    # the peak of the call is at least what was resident when it began.
    return base, max(base, probe.peak())


# ---------------------------------------------------------------------------------------------
# Output


def table_header(compare: bool) -> str:
    header = f"{'impl':10s} {'mode':9s} {'res':>9s} {'batch':>5s} {'ms/iter':>10s} "
    header += f"{'images/s':>9s} {'peak MiB':>9s}" + ("  vs DeiT-Tiny" if compare else "")
    return header + "\n" + "-" * len(header)


def table_line(r: Dict[str, Any], compare: bool) -> str:
    """One row of the printed table."""
    res = f"{r['height']}" if r["height"] == r["width"] else f"{r['height']}x{r['width']}"
    if r["status"] != "ok":
        return f"{r['impl']:10s} {r['mode']:9s} {res:>9s} {r['batch']:5d}  {r['status']}"
    line = (
        f"{r['impl']:10s} {r['mode']:9s} {res:>9s} {r['batch']:5d} {r['ms_per_iter']:10.2f} "
        f"{r['images_per_s']:9.1f} {r['peak_mem_mib']:9.0f}"
    )
    if compare and r.get("ratio_to_deit"):
        line += f"  {r['ratio_to_deit']:.2f}x"
    return line


def plot(rows: Sequence[Dict[str, Any]], path: str, title: str) -> None:
    """Time and memory against resolution, one line per (impl, mode, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: Dict[Tuple[str, str, int], List[Dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok":
            series.setdefault((r["impl"], r["mode"], r["batch"]), []).append(r)
    for (impl, mode, batch), points in sorted(series.items()):
        points = sorted(points, key=lambda p: p["height"] * p["width"])
        xs = [(p["height"] * p["width"]) ** 0.5 for p in points]
        label = f"{impl} {mode} b{batch}"
        marker = "o" if mode == "inference" else "s"
        ax_t.plot(xs, [p["ms_per_iter"] for p in points], marker=marker, label=label)
        ax_m.plot(xs, [p["peak_mem_mib"] for p in points], marker=marker, label=label)
    for ax, ylabel in ((ax_t, "ms per iteration"), (ax_m, "peak memory (MiB)")):
        ax.set_xlabel("resolution (sqrt of H x W, px)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    if any(len(v) > 1 for v in series.values()):
        ax_t.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        resolutions = [parse_resolution(r) for r in args.resolutions]
    except argparse.ArgumentTypeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    threads = args.threads or (2 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    impls = args.scan_impls or (["numba"] if device.type == "cpu" else ["auto"])
    amp = AMP_DTYPES[args.amp]

    from detectron2.config import instantiate

    from plainmamba.analysis import task_of

    from plainmamba.engine import ConfigError

    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = instantiate(cfg.model).to(device)
    kind = task_of(model)
    trunks = plainmamba_modules(model)
    if not trunks:
        print("error: the config's model has no PlainMamba trunk", file=sys.stderr)
        return 2
    target = trunks[0] if args.model == "trunk" else model
    compare = args.compare_deit
    if compare is None:
        compare = (
            device.type == "cpu"
            and args.mode == ["inference"]
            and args.model == "full"
            and kind == "classification"
        )

    deit = None
    if compare:
        import timm

        deit = timm.create_model(DEIT).to(device).eval()

    config_name = args.config_file
    if os.path.isfile(config_name) and os.path.abspath(config_name).startswith(REPO + os.sep):
        config_name = os.path.relpath(config_name, REPO)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    print(
        f"# {config_name} | {args.model} | {args.device} ({device_name}) | amp {args.amp} | "
        f"{torch.get_num_threads()} threads | torch {torch.__version__}"
        + (f" | compiled ({args.compile})" if args.compile else "")
    )

    skipped = []
    usable = []
    resolved: Dict[str, str] = {"deit": "deit"}
    for impl in impls:
        name, reason = check_scan_impl(impl, device)
        if reason:
            skipped.append({"impl": impl, "reason": reason})
            print(f"skipped scan path {impl!r}: {reason}")
        else:
            usable.append(impl)
            resolved[impl] = name
            if name != impl:
                print(f"scan path {impl!r} runs as {name!r} here")

    ops = ops_report(device)
    print(
        "# overrides: "
        + (" ".join(f"{k}={v}" for k, v in ops["env_overrides"].items()) or "none")
        + " | default paths: "
        + ", ".join(f"{k} {v}" for k, v in ops["default_paths"].items())
        + f" | CPU fast paths: {'on' if ops['cpu_fast_paths'] else 'off'}"
    )
    if device.type == "cuda":
        print(f"# triton settings: {ops['triton_settings']}")

    probe = MemoryProbe(device)
    meta = dict(
        config=config_name,
        model=args.model,
        task=kind,
        device=args.device,
        device_name=device_name,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        amp=args.amp,
        compile=args.compile,
        warmup=args.warmup,
        iters=args.iters,
        memory=probe.kind,
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        ops=ops,
    )
    timer = Timer(device)
    rows: List[Dict[str, Any]] = []
    print(table_header(compare), flush=True)

    def save() -> None:
        # Written after every group, so that a sweep stopped by a time limit keeps its rows.
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(dict(meta, results=rows, skipped=skipped), f, indent=1)

    def add(row: Dict[str, Any]) -> None:
        row["resolved_impl"] = resolved.get(row["impl"])
        rows.append(row)
        print(table_line(row, compare), flush=True)

    for mode in args.mode:
        train = mode == "train"
        for hw in resolutions:
            for batch in args.batch_sizes:
                runners = []
                for impl in usable:
                    set_scan_impl(target, impl)
                    try:
                        step = make_step(
                            target, kind, args.model, train, batch, hw, device, amp, args.compile
                        )
                    except Exception as err:  # noqa: BLE001 - e.g. inputs too large to allocate
                        add(_row(impl, f"plainmamba[{impl}]", mode, hw, batch, err))
                        continue
                    runners.append(Runner(f"plainmamba[{impl}]", impl, step, train))
                if deit is not None and not train:
                    x = torch.randn(batch, 3, 224, 224, device=device)

                    def deit_step(x=x):
                        with torch.no_grad():
                            return deit(x)

                    runners.append(Runner(DEIT, "deit", deit_step, False))
                # Each runner's path is chosen when its step runs: the impl is set per call.
                wrapped = [
                    Runner(r.name, r.impl, _with_impl(target, r.impl, r.step), r.train)
                    for r in runners
                ]
                times = time_runners(wrapped, args.warmup, args.iters, timer, round_robin=not train)
                base_ms = times.get(DEIT) if deit is not None else None
                for runner in wrapped:
                    result = times[runner.name]
                    if isinstance(result, Exception):
                        add(_row(runner.impl, runner.name, mode, hw, batch, result))
                        continue
                    try:
                        base_mem, peak_mem = measure_memory(runner, probe)
                    except Exception as err:  # noqa: BLE001
                        add(_row(runner.impl, runner.name, mode, hw, batch, err))
                        continue
                    row = _row(runner.impl, runner.name, mode, hw, batch, None)
                    row.update(
                        ms_per_iter=result,
                        ms=result,
                        images_per_s=batch * 1e3 / result,
                        peak_mem_mib=peak_mem,
                        base_mem_mib=base_mem,
                        ratio_to_deit=(
                            result / base_ms
                            if isinstance(base_ms, float) and runner.name != DEIT
                            else None
                        ),
                    )
                    add(row)
                save()
    for entry in skipped:
        print(f"{entry['impl']:10s} skipped: {entry['reason']}")
    save()
    if args.plot:
        plot(rows, args.plot, f"{config_name} ({args.model}) on {device_name}, amp {args.amp}")
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def ops_report(device: torch.device) -> Dict[str, Any]:
    """The operators' configuration for this run: the Triton settings in use on ``device``, the
    path and tuning override variables that are set (read once, at import), and the paths that
    ``auto`` picks here for the depthwise conv and the deformable attention."""
    from plainmamba.ops import all_switches, env_overrides, triton_settings

    overrides = {
        var: switch.env_override
        for var, switch in sorted(all_switches().items())
        if switch.env_override is not None
    }
    overrides.update(env_overrides())
    from plainmamba.modeling import plainmamba as trunk

    if os.environ.get("PLAINMAMBA_CPU_FAST") is not None:
        overrides["PLAINMAMBA_CPU_FAST"] = os.environ["PLAINMAMBA_CPU_FAST"]
    cpu_fast = trunk.CPU_FAST_PATHS
    paths = {}
    for var, switch in sorted(all_switches().items()):
        try:
            paths[switch.what] = switch.resolve(None, device)
        except (ValueError, RuntimeError) as err:
            paths[switch.what] = f"error: {err}"
    return dict(
        triton_settings=triton_settings(device).as_dict(),
        env_overrides=overrides,
        default_paths=paths,
        cpu_fast_paths=cpu_fast,
    )


def _with_impl(target: torch.nn.Module, impl: str, step: Callable[[], Any]) -> Callable[[], Any]:
    if impl == "deit":
        return step

    def run():
        set_scan_impl(target, impl)
        return step()

    return run


def _row(impl, name, mode, hw, batch, error) -> Dict[str, Any]:
    status = "ok" if error is None else f"error: {type(error).__name__}: {str(error)[:200]}"
    return dict(
        impl=impl,
        model=name,
        mode=mode,
        res=hw[0] if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}",
        size=hw[0],
        height=hw[0],
        width=hw[1],
        batch=batch,
        status=status,
        ms_per_iter=None,
        ms=None,
        images_per_s=None,
        peak_mem_mib=None,
        base_mem_mib=None,
        ratio_to_deit=None,
    )


if __name__ == "__main__":
    sys.exit(main())
