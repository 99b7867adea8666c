#!/usr/bin/env python
"""GPU figures for PlainMamba-L1's scan paths, every path measured in the same run.

    python dev/benchmarks/bench_gpu.py --impls triton mamba --parts kernel infer train trunk \\
        --compile none --json out.json

Parts:

- ``kernel``: the four-direction scan of one L1 layer (E=384, N=16, bf16 inputs) at 224 px,
  batch 128, and at 1024 px, batch 1: forward alone (with the achieved bandwidth over the
  fewest bytes it must move: u, delta, B, C read once, y written once), and forward + backward;
- ``infer``: L1 classifier (trunk + pooled linear head), 224 px, bf16 autocast, images/s;
- ``train``: one training step (forward, cross-entropy, backward, fused AdamW), images/s;
- ``trunk``: the L1 trunk alone at 1024x1024, batch 1, bf16 autocast, milliseconds;
- ``profile``: L1 inference and training step under torch.profiler, GPU time per kernel;
- ``dwconv``: the mixer's depthwise conv + SiLU, cuDNN (two layouts) against the Triton op;
- ``stem``: the stem's 7x7/2 conv, cuDNN directly against its space-to-depth form.

``--scans S1 S2 ...`` first times the scan kernels (profiler, one layer at batch 128) under each
setting of scans per program, written as ``$PLAINMAMBA_TRITON_SCANS`` values (``@`` adds register
caps as ``$PLAINMAMBA_TRITON_MAXNREG`` values), and keeps the fastest per kernel for the rest of
the run. The Triton tuning is a ``plainmamba.ops.TritonSettings`` passed explicitly to the
kernels timed here and made the process default (``set_triton_settings``) for the model parts;
the environment is only read, once, as the package's overrides.

``--compile`` takes ``none``, ``default`` (torch.compile) and ``reduce-overhead`` (torch.compile
with CUDA graphs). Timings are medians over ``--iters`` calls timed with CUDA events after
``--warmup`` calls; paths are timed one after the other on the same GPU. DeiT-Tiny (timm) is
timed beside them for infer/train with ``--deit``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

L1 = dict(embed_dim=192, depth=24, num_stem_convs=1, dwconv_layers=[0])
PEAK_GBS = 3350.0  # H100 SXM HBM3, datasheet


def cuda_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` over ``iters`` calls, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def layer_inputs(batch: int, side: int, channels: int = 384, n_state: int = 16, rank: int = 12):
    """One L1 layer's scan inputs in bf16, B and C as views of x_proj's output like the model."""
    g = torch.Generator(device="cuda").manual_seed(0)
    length = side * side
    bf = torch.bfloat16

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, device="cuda") * scale + shift

    proj = rnd(batch, length, rank + 2 * n_state).to(bf)
    return dict(
        u=rnd(batch, length, channels).to(bf),
        delta=rnd(batch, length, channels, scale=0.5, shift=-2.0).to(bf),
        A=-torch.exp(rnd(channels, n_state, scale=0.5, shift=0.5)),
        B=proj[..., rank : rank + n_state],
        C=proj[..., rank + n_state :],
        D=rnd(channels),
        direction_Bs=rnd(5, n_state, scale=0.02),
        delta_bias=rnd(channels, scale=0.3),
        hw=(side, side),
    )


def bench_kernel(impl: str, args, backward: bool = True, settings=None) -> List[dict]:
    """The scan of one L1 layer; ``settings`` (TritonSettings) tunes the Triton path (default:
    the settings in force)."""
    from plainmamba.ops import triton_settings, zigzag_scan

    settings = settings or triton_settings()
    kw = dict(impl=impl, triton_settings=settings)

    rows = []
    for batch, side in ((128, 14), (1, 64)):
        inp = layer_inputs(batch, side)
        length, channels, n_state = side * side, 384, 16
        with torch.no_grad():
            ms = cuda_ms(lambda: zigzag_scan(**inp, **kw), args.warmup, args.iters)
        min_bytes = 2 * (2 * batch * length * channels + 2 * batch * length * n_state)
        min_bytes += 2 * batch * length * channels
        gbs = min_bytes / ms / 1e6
        ms_fb = float("nan")
        if backward:
            leaves = {k: v.detach().clone().requires_grad_() for k, v in inp.items() if k != "hw"}
            gout = torch.randn(batch, length, channels, device="cuda", dtype=torch.bfloat16)

            def fwd_bwd():
                y = zigzag_scan(**leaves, hw=inp["hw"], **kw)
                y.backward(gout)

            ms_fb = cuda_ms(fwd_bwd, args.warmup, args.iters)
        rows.append(
            dict(
                part="kernel", impl=impl, batch=batch, grid=f"{side}x{side}", fwd_ms=ms,
                fwd_gbs=gbs, fwd_frac_of_3350=gbs / PEAK_GBS, fwd_bwd_ms=ms_fb,
                block=settings.block(), block_bwd=settings.block(backward=True),
            )
        )  # fmt: skip
        print(
            f"kernel {impl:6s} B={batch:3d} {side}x{side} block={rows[-1]['block']}/"
            f"{rows[-1]['block_bwd']}: fwd {ms:8.3f} ms "
            f"({gbs:6.0f} GB/s, {100 * gbs / PEAK_GBS:4.1f}% of 3350)  fwd+bwd {ms_fb:8.3f} ms",
            flush=True,
        )
    return rows


def bench_dwconv(args) -> List[dict]:
    """The mixer's depthwise 7x7 conv + SiLU (E=384, bf16) per layer: cuDNN channels-last (the
    model's old path), cuDNN NCHW, and the fused Triton op on token-major tensors."""
    rows = []
    channels, k = 384, 7
    for batch, side in ((128, 14), (1, 64)):
        length = side * side
        conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels).cuda()
        proj = torch.randn(batch, length, 2 * channels, device="cuda", dtype=torch.bfloat16)
        variants = {}

        def cudnn(fmt):
            def fn(t):
                img = t.reshape(batch, side, side, channels).permute(0, 3, 1, 2)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = F.silu(conv(img.contiguous(memory_format=fmt)))
                return out.permute(0, 2, 3, 1).reshape(batch, length, channels)

            return fn

        variants["cudnn_nhwc"] = cudnn(torch.channels_last)
        variants["cudnn_nchw"] = cudnn(torch.contiguous_format)
        from plainmamba.ops import dwconv2d_silu

        variants["triton"] = lambda t: dwconv2d_silu(
            t, conv.weight, conv.bias, (side, side), impl="triton"
        )
        for name, fn in variants.items():
            x = proj[..., :channels]
            with torch.no_grad():
                ms = cuda_ms(lambda: fn(x), args.warmup, args.iters)
            leaf = proj.detach().clone().requires_grad_()
            gout = torch.randn(batch, length, channels, device="cuda", dtype=torch.bfloat16)

            def fwd_bwd():
                fn(leaf[..., :channels]).backward(gout)

            ms_fb = cuda_ms(fwd_bwd, args.warmup, args.iters)
            rows.append(dict(part="dwconv", impl=name, batch=batch, grid=f"{side}x{side}",
                             fwd_ms=ms, fwd_bwd_ms=ms_fb))  # fmt: skip
            print(f"dwconv {name:10s} B={batch:3d} {side}x{side}: fwd {ms:7.3f} ms  "
                  f"fwd+bwd {ms_fb:7.3f} ms", flush=True)  # fmt: skip
    return rows


def bench_stem(args) -> List[dict]:
    """The stem's 7x7/2 conv at batch 128, 224 px, bf16: cuDNN directly against the
    space-to-depth form (ConvPatchEmbed.stem_conv), forward and forward + backward."""
    from plainmamba.modeling.plainmamba import ConvPatchEmbed

    embed = ConvPatchEmbed(3, 192).cuda()
    x = torch.randn(args.batch, 3, 224, 224, device="cuda").contiguous(
        memory_format=torch.channels_last
    )
    rows = []
    for s2d in (False, True):

        def fwd():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return embed.stem_conv(x, space_to_depth=s2d)

        def fwd_bwd():
            fwd().float().mean().backward()

        with torch.no_grad():
            ms = cuda_ms(fwd, args.warmup, args.iters)
        ms_fb = cuda_ms(fwd_bwd, args.warmup, args.iters)
        rows.append(dict(part="stem", space_to_depth=s2d, fwd_ms=ms, fwd_bwd_ms=ms_fb))
        print(f"stem conv space_to_depth={s2d}: fwd {ms:.3f} ms  fwd+bwd {ms_fb:.3f} ms",
              flush=True)  # fmt: skip
    return rows


def build_l1(impl: str, drop_path: float = 0.0) -> nn.Module:
    from plainmamba.modeling import PlainMamba

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = PlainMamba(**L1, drop_path_rate=drop_path, scan_impl=impl)
            self.head = nn.Linear(192, 1000)

        def forward(self, x):
            tokens = self.backbone.forward_features(x)[0]
            return self.head(tokens.mean(1))

    return Classifier().cuda()


def build_deit() -> nn.Module:
    import timm

    return timm.create_model("deit_tiny_patch16_224", num_classes=1000).cuda()


def maybe_compile(model: nn.Module, mode: str) -> nn.Module:
    if mode == "none":
        return model
    if mode == "default":
        return torch.compile(model)
    return torch.compile(model, mode=mode)


def first_and_median(step: Callable[[], object], args, reset_peak: bool = False):
    """Seconds of the first call (compilation included), then the median milliseconds."""
    t0 = time.time()
    step()
    torch.cuda.synchronize()
    first = time.time() - t0
    if reset_peak:
        torch.cuda.reset_peak_memory_stats()
    return first, cuda_ms(step, args.warmup, args.iters)


def bench_infer(name: str, model: nn.Module, batch: int, size: int, args, mode: str) -> dict:
    model.eval()
    # Inference compiles with inductor's freezing (--freeze): parameters become constants, so
    # BatchNorm folds into the stem's convolutions.
    import torch._inductor.config as inductor_config

    freeze = bool(args.freeze and mode != "none")
    inductor_config.freezing = freeze
    run = maybe_compile(model, mode)
    x = torch.randn(batch, 3, size, size, device="cuda")

    def step():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return run(x)

    first, ms = first_and_median(step, args)
    inductor_config.freezing = False
    row = dict(part="infer", impl=name, compile=mode, batch=batch, size=size, ms=ms,
               images_per_s=batch * 1e3 / ms, first_call_s=first,
               freeze=freeze,
               cudnn_benchmark=torch.backends.cudnn.benchmark)  # fmt: skip
    print(f"infer  {name:6s} {mode:15s} B={batch} {size}px: {ms:8.2f} ms  "
          f"{row['images_per_s']:9.0f} img/s", flush=True)  # fmt: skip
    return row


def bench_train(name: str, model: nn.Module, batch: int, size: int, args, mode: str) -> dict:
    model.train()
    run = maybe_compile(model, mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    x = torch.randn(batch, 3, size, size, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    first, ms = first_and_median(step, args, reset_peak=True)
    row = dict(part="train", impl=name, compile=mode, batch=batch, size=size, ms=ms,
               images_per_s=batch * 1e3 / ms, first_call_s=first,
               peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)  # fmt: skip
    print(f"train  {name:6s} {mode:15s} B={batch} {size}px: {ms:8.2f} ms  "
          f"{row['images_per_s']:9.0f} img/s  peak {row['peak_mem_gb']:.1f} GiB",
          flush=True)  # fmt: skip
    return row


def bench_trunk(impl: str, args, mode: str, size: int = 1024) -> dict:
    from plainmamba.modeling import PlainMamba

    trunk = PlainMamba(**L1, scan_impl=impl).cuda().eval()
    run = maybe_compile(trunk, mode)
    x = torch.randn(1, 3, size, size, device="cuda")

    def step():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return run(x)

    first, ms = first_and_median(step, args)
    print(f"trunk  {impl:6s} {mode:15s} B=1 {size}px: {ms:8.2f} ms", flush=True)
    return dict(part="trunk", impl=impl, compile=mode, batch=1, size=size, ms=ms,
                first_call_s=first)  # fmt: skip


def profile_l1(impl: str, batch: int, mode: str = "none") -> dict:
    """L1 (infer, then a training step) under torch.profiler: GPU time per kernel. ``mode``
    ``default`` profiles the torch.compile'd model (CUDA graphs would hide the kernels)."""
    from torch.profiler import ProfilerActivity, profile

    model = maybe_compile(build_l1(impl), mode)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    rows = {}
    for part in ("infer", "train"):
        model.train(part == "train")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16), torch.set_grad_enabled(
                part == "train"
            ):
                out = model(x)
            if part == "train":
                F.cross_entropy(out, y).backward()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=32, max_name_column_width=100
        )
        print(f"profile {impl} {mode} {part} B={batch} (3 calls)\n{table}", flush=True)
        total = sum(e.device_time_total for e in prof.key_averages()) / 3e3
        rows[part] = dict(
            total_ms=total,
            top={e.key[:100]: e.device_time_total / 3e3 for e in sorted(
                prof.key_averages(), key=lambda e: -e.device_time_total)[:32]},
        )  # fmt: skip
    return dict(part="profile", impl=impl, compile=mode, batch=batch, **rows)


def scan_kernel_us(inp: dict, backward: bool, settings, calls: int = 5) -> Dict[str, float]:
    """GPU microseconds per call of each Triton scan kernel (torch.profiler), batch 128, under
    ``settings`` (TritonSettings)."""
    from torch.profiler import ProfilerActivity, profile

    from plainmamba.ops import zigzag_scan

    leaves = {k: v.detach().clone().requires_grad_(backward) for k, v in inp.items() if k != "hw"}
    gout = torch.randn_like(inp["u"])

    def step():
        with torch.set_grad_enabled(backward):
            y = zigzag_scan(**leaves, hw=inp["hw"], impl="triton", triton_settings=settings)
            if backward:
                y.backward(gout)

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    return {
        e.key: e.device_time_total / calls
        for e in prof.key_averages()
        if e.key.startswith("_zz_") and e.key != "_zz_table_kernel"
    }


def _scans_setting(base, setting: str):
    """``base`` (TritonSettings) with the scans per program and register caps of ``setting``
    (``SCANS[@CAPS]`` in the override variables' syntax); kernels not named take the defaults."""
    from plainmamba.ops import default_triton_settings
    from plainmamba.ops import tuning as ts

    scans, _, caps = setting.partition("@")
    defaults = default_triton_settings(torch.cuda.get_device_capability())
    fields = [f"{p}_{k}" for p in ("scans", "maxnreg") for k in ts.KERNELS]
    base = base.replace(**{f: getattr(defaults, f) for f in fields})
    return base.with_env({ts.SCANS_ENV: scans, ts.MAXNREG_ENV: caps})


def _as_env(settings) -> str:
    """The scans and caps of ``settings`` as override variables (for other processes)."""
    from plainmamba.ops import tuning as ts

    scans = ",".join(f"{k}:{settings.scans(k)}" for k in ts.KERNELS)
    caps = ",".join(f"{k}:{settings.max_registers(k)}" for k in ts.KERNELS)
    return f"{ts.SCANS_ENV}={scans} {ts.MAXNREG_ENV}={caps}"


def sweep_scans(args, rows: List[dict], save, env: dict) -> None:
    """Per-kernel GPU time of the scan kernels for each ``--scans`` setting (scans per program,
    optionally ``@`` register caps); the fastest setting of each kernel then becomes the process
    default (set_triton_settings) for the model parts."""
    from plainmamba.ops import set_triton_settings, triton_settings
    from plainmamba.ops import zigzag_scan_triton as zt

    inp = layer_inputs(128, 14)
    base = triton_settings()
    best: Dict[str, tuple] = {}
    for setting in args.scans:
        try:
            candidate = _scans_setting(base, setting)
            us = scan_kernel_us(inp, backward=True, settings=candidate)
        except Exception as exc:
            print(f"FAILED scans {setting}: {exc!r}", flush=True)
            rows.append(dict(failed=f"scans {setting}: {exc!r}"[:500]))
            continue
        stats = dict(zt.KERNEL_STATS)
        rows.append(dict(part="scans", setting=setting, us=us, stats=stats))
        save()
        print(f"scans {setting:28s} " + "  ".join(f"{k} {v:7.1f} us" for k, v in us.items()),
              flush=True)  # fmt: skip
        for kernel, name in (("fwd", "_zz_fwd_kernel"), ("rev", "_zz_bwd_rev_kernel"),
                             ("bf", "_zz_bwd_fwd_kernel")):  # fmt: skip
            if name in us and (kernel not in best or us[name] < best[kernel][0]):
                best[kernel] = (us[name], candidate.scans(kernel), candidate.max_registers(kernel))
    picked = base.replace(
        **{f"scans_{k}": v[1] for k, v in best.items()},
        **{f"maxnreg_{k}": v[2] for k, v in best.items()},
    )
    set_triton_settings(picked)
    env["triton_settings"] = picked.as_dict()
    print(f"using {_as_env(picked)}", flush=True)
    if args.pick_file:  # for the later stages of dev/benchmarks/run_gpu.sh (other processes)
        with open(args.pick_file, "w") as f:
            f.write(f"export {_as_env(picked)}\n")


def pick_blocks(args, it, rows: List[dict], save, env: dict) -> None:
    """Time the forward for each ``--blocks`` and forward + backward for each ``--bwd-blocks``;
    the fastest of each (batch 128) becomes the process default for the model parts."""
    from plainmamba.ops import set_triton_settings, triton_settings

    current = triton_settings()
    for key, field, blocks, backward in (
        ("fwd_ms", "scan_block", args.blocks, False),
        ("fwd_bwd_ms", "scan_block_bwd", args.bwd_blocks, True),
    ):
        best = None
        for block in blocks or []:
            # As with the override variables, the backward follows scan_block unless
            # scan_block_bwd is set.
            candidate = current.replace(**{field: block})
            try:
                got = bench_kernel("triton", it, backward=backward, settings=candidate)
            except Exception as exc:
                print(f"FAILED kernel triton {field}={block}: {exc!r}", flush=True)
                rows.append(dict(failed=f"kernel {field}={block}: {exc!r}"[:500]))
                continue
            rows.extend(got)
            save()
            if best is None or got[0][key] < best[1]:
                best = (candidate, got[0][key])
        if best is not None:
            current = best[0]
            print(f"using {field}={getattr(current, field)}", flush=True)
    set_triton_settings(current)
    env["triton_settings"] = current.as_dict()


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impls", nargs="+", default=["triton"])
    parser.add_argument("--parts", nargs="+", default=["kernel", "infer", "train", "trunk"])
    parser.add_argument("--compile", nargs="+", default=["none"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--slow-iters", type=int, default=5, help="iters for mamba/ref models")
    parser.add_argument("--deit", action="store_true", help="time DeiT-Tiny too")
    parser.add_argument(
        "--trunk-mode", default=None, help="compile mode for the trunk part when compiling"
    )
    parser.add_argument(
        "--blocks", nargs="+", type=int, default=None,
        help="Triton channels per program of the forward to compare in the kernel part; the"
        " fastest at batch 128 is then used for the model parts",
    )  # fmt: skip
    parser.add_argument(
        "--bwd-blocks",
        nargs="+",
        type=int,
        default=None,
        help="Triton channels per program of the backward to compare (forward + backward)",
    )
    parser.add_argument("--fwd-only", action="store_true", help="kernel part: forward only")
    parser.add_argument(
        "--scans", nargs="+", default=None,
        help="scans per program to compare, as $PLAINMAMBA_TRITON_SCANS values (e.g."
        " fwd:4,rev:2,bf:2, with @rev:168 for register caps); the fastest per kernel is used for"
        " the model parts",
    )  # fmt: skip
    parser.add_argument(
        "--freeze", type=int, default=1, help="compiled inference with inductor freezing (1/0)"
    )
    parser.add_argument(
        "--cudnn-benchmark", type=int, default=1, help="torch.backends.cudnn.benchmark (1/0)"
    )
    parser.add_argument("--pick-file", default=None, help="--scans: write the pick as exports")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from plainmamba.ops import all_switches, env_overrides, set_triton_settings, triton_settings

    # Registers and spills of every compiled kernel are part of the report.
    set_triton_settings(triton_settings().replace(record_stats=True))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    rows: List[Dict] = []
    env = dict(
        gpu=torch.cuda.get_device_name(), torch=torch.__version__,
        python=platform.python_version(), argv=sys.argv,
        settings={
            **{v: s.env_override for v, s in all_switches().items() if s.env_override},
            **env_overrides(),
        },
        triton_settings=triton_settings().as_dict(),
    )  # fmt: skip
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    print(env, flush=True)

    previous: Dict[str, List] = dict(runs=[], rows=[])
    if args.json and os.path.exists(args.json):  # several invocations share one file
        with open(args.json) as f:
            previous = json.load(f)

    def save():
        if args.json:  # after every figure: a lease that ends early still returns the rest
            with open(args.json, "w") as f:
                runs = previous["runs"] + [env]
                json.dump(dict(runs=runs, rows=previous["rows"] + rows), f, indent=1)

    def guarded(fn, *a, **k):
        try:
            rows.append(fn(*a, **k))
        except Exception as exc:  # keep the other figures of a lease
            print(f"FAILED {fn.__name__}{a[:1]}: {type(exc).__name__}: {exc}", flush=True)
            rows.append(dict(failed=f"{fn.__name__} {a[:1]} {k}: {exc!r}"[:500]))
        torch.cuda.empty_cache()
        save()

    for part, bench in (("stem", bench_stem), ("dwconv", bench_dwconv)):
        if part in args.parts:
            try:
                rows.extend(bench(args))
            except Exception as exc:  # keep the other figures of a lease
                print(f"FAILED {part}: {exc!r}", flush=True)
            save()
    for impl in args.impls:
        if impl == "none":  # only the DeiT-Tiny figures
            continue
        slow = impl in ("mamba", "ref")
        it = argparse.Namespace(warmup=2 if slow else args.warmup, freeze=args.freeze,
                                iters=args.slow_iters if slow else args.iters)  # fmt: skip
        if impl == "triton" and args.scans:
            sweep_scans(args, rows, save, env)
        if "kernel" in args.parts:
            if impl == "triton" and (args.blocks or args.bwd_blocks):
                pick_blocks(args, it, rows, save, env)
            else:
                rows.extend(bench_kernel(impl, it, backward=not args.fwd_only))
                save()
        if "profile" in args.parts:
            for mode in args.compile:
                guarded(profile_l1, impl, args.batch, "default" if mode != "none" else mode)
        for mode in args.compile:
            if slow and mode != "none":
                continue  # mamba-ssm's extension is opaque to torch.compile
            if "infer" in args.parts:
                guarded(bench_infer, impl, build_l1(impl), args.batch, 224, it, mode)
            if "train" in args.parts:
                guarded(bench_train, impl, build_l1(impl, 0.1), args.batch, 224, it, mode)
            if "trunk" in args.parts:
                trunk_mode = args.trunk_mode if (mode != "none" and args.trunk_mode) else mode
                guarded(bench_trunk, impl, it, trunk_mode)
    if args.deit:
        for mode in args.compile:
            if "infer" in args.parts:
                guarded(bench_infer, "deit_t", build_deit(), args.batch, 224, args, mode)
            if "train" in args.parts:
                guarded(bench_train, "deit_t", build_deit(), args.batch, 224, args, mode)
    try:
        from plainmamba.ops import zigzag_scan_triton as zt

        env["triton_kernel_stats"] = zt.KERNEL_STATS
        print("kernel registers/spills:", json.dumps(zt.KERNEL_STATS), flush=True)
    except Exception:
        pass
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
