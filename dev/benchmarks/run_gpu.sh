#!/usr/bin/env bash
# One GPU lease on a bare machine (Python 3.12, torch, triton, no registry): install the wheels
# carried in .whl/, build mamba-ssm's selective_scan_cuda in the background, run the Triton
# tests on the GPU, the benchmarks (eager, then torch.compile while the build finishes), the
# agreement with mamba-ssm and the training curves; logs and JSON go to $OUT. Every stage has a
# time limit so that the whole script ends before $DEADLINE seconds.
#   DEADLINE=540 STAGES="tests kernel eager graphs ab profile mamba tool curves deit" \
#     bash dev/benchmarks/run_gpu.sh
# (run tool: carry [".whl"]). SCANS="fwd:4,rev:4,bf:4 fwd:2,rev:1,bf:1@rev:168" compares
# scans-per-program settings in the kernel stage; AB="VAR=x;VAR=y" times the model under each
# setting in the ab stage. Stages run in that order; leave some out to split the work between
# calls. TESTS_K selects tests (pytest -k); COMPARE_ATOMIC=0 skips the atomic variant.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-/tmp/out}
DEADLINE=${DEADLINE:-540}
mkdir -p "$OUT" /tmp/site
LOG=$OUT/log.txt
T0=$(date +%s)
stamp() { echo "=== [$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
# Seconds for a stage: its own cap, less what must stay for the stages after it.
budget() {
  local left=$((DEADLINE - ($(date +%s) - T0) - $2))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
run() {  # run CAP RESERVE CMD...: a stage within the deadline, its output's tail in the log
  local t
  t=$(budget "$1" "$2")
  shift 2
  if [ "$t" -lt 20 ]; then stamp "skipped (no time): $*"; return; fi
  timeout "$t" "$@" 2>&1 | grep -v -i "warn" | tail -30 | tee -a "$LOG"
}

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  $(ls .whl/*.whl | grep -v detectron2) >>"$LOG" 2>&1 || exit 1
# Detectron2's wheel is tagged cp310 for ops never imported: unpack it rather than install it.
python3 -c "import zipfile, glob
zipfile.ZipFile(glob.glob('.whl/sal_detectron2*.whl')[0]).extractall('/tmp/site')"
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" |
  tee -a "$LOG"

if ls .whl/mamba_so.part* >/dev/null 2>&1; then
  mkdir -p /tmp/mamba && cat .whl/mamba_so.part* | tar xJf - -C /tmp/mamba && stamp "carried build"
  BUILD_PID=
  export PYTHONPATH=/tmp/mamba:$PYTHONPATH
else
  (MAX_JOBS=12 TORCH_CUDA_ARCH_LIST=9.0 timeout 400 python3 dev/benchmarks/build_mamba_ext.py \
    .whl/mamba_ssm-*.tar.gz /tmp/mamba >/tmp/build.log 2>&1; echo "build rc=$?" >>/tmp/build.log) &
  BUILD_PID=$!
fi

has() { [[ " ${STAGES:-tests kernel eager graphs profile mamba curves deit} " == *" $1 "* ]]; }
if has tests; then
  stamp "triton tests on the GPU (with mamba-ssm agreement when its build was carried)"
  run 150 60 python3 -m pytest -q tests/ops/test_zigzag_scan_triton.py tests/ops/test_dwconv.py \
    ${TESTS_K:+-k "$TESTS_K"}
fi
if has kernel; then
  stamp "kernel: one L1 layer; per-kernel GPU time of eager L1"
  # SCANS: settings of $PLAINMAMBA_TRITON_SCANS to compare; the fastest per kernel is kept for
  # the later stages (bench_gpu.py --scans).
  run 90 60 python3 dev/benchmarks/bench_gpu.py --impls triton --parts kernel dwconv stem \
    ${SCANS:+--scans $SCANS --pick-file /tmp/scans.env} --json "$OUT/bench.json"
  [ -f /tmp/scans.env ] && . /tmp/scans.env && env | grep PLAINMAMBA_TRITON | tee -a "$LOG"
  if [ "${COMPARE_ATOMIC:-1}" = 1 ]; then
    run 40 60 env PLAINMAMBA_TRITON_SCATTER=atomic python3 dev/benchmarks/bench_gpu.py \
      --impls triton --parts kernel --json "$OUT/bench.json"
  fi
fi
B="${BLOCKS:-}"  # e.g. "PLAINMAMBA_TRITON_BLOCK=64 PLAINMAMBA_TRITON_BLOCK_BWD=32"
if has eager; then
  stamp "L1 eager: triton"
  run 90 30 env $B python3 dev/benchmarks/bench_gpu.py --impls triton --parts infer train trunk \
    --json "$OUT/bench.json"
fi
if has graphs; then
  stamp "L1 torch.compile + CUDA graphs: triton"
  run 300 20 env $B python3 dev/benchmarks/bench_gpu.py --impls triton --parts infer train trunk \
    --compile reduce-overhead --json "$OUT/bench.json"
fi
if has ab; then
  # AB="PLAINMAMBA_TRITON_SCANS=fwd:4,rev:2,bf:4;PLAINMAMBA_DWCONV=ref": each setting (separated
  # by ';', its variables by spaces) times inference and training under compile + CUDA graphs.
  IFS=';' read -ra SETTINGS <<<"${AB:-}"
  for setting in "${SETTINGS[@]}"; do
    stamp "A/B: $setting"
    run 150 20 env $B $setting python3 dev/benchmarks/bench_gpu.py --impls triton --parts infer train \
      --compile reduce-overhead --json "$OUT/bench.json"
  done
fi
if has profile; then
  stamp "L1 under torch.compile (no CUDA graphs): GPU time per kernel"
  run 200 20 env $B python3 dev/benchmarks/bench_gpu.py --impls triton --parts profile \
    --compile default --json "$OUT/bench.json"
fi
if [ -n "$BUILD_PID" ]; then
  stamp "waiting for the mamba-ssm build"
  wait "$BUILD_PID"
  tail -3 /tmp/build.log | tee -a "$LOG"
  export PYTHONPATH=/tmp/mamba:$PYTHONPATH
  if [ "${PACK_MAMBA:-0}" = 1 ]; then  # back in pieces under 16 MB (carry as .whl/mamba_so.part*)
    (cd /tmp/mamba && tar cf - mamba_ssm selective_scan_cuda*.so | xz -T16 -6 >/tmp/m.tar.xz) &&
      split -b 15M /tmp/m.tar.xz "$OUT/mamba_so.part"
  fi
fi
if has mamba; then
  stamp "mamba-ssm path: kernel and L1 eager"
  run 120 20 python3 dev/benchmarks/bench_gpu.py --impls mamba --json "$OUT/bench.json"
fi
if has tool; then
  # The issue's figures by tools/benchmark.py itself, the Triton and mamba-ssm paths in one run
  # (compiled without fullgraph, so mamba-ssm's extension is a graph break, not an error).
  stamp "tools/benchmark.py: L1 at 224 px, batch 128, and the trunk at 1024 px, batch 1"
  run 240 60 env $B python3 tools/benchmark.py --device cuda --model full --mode inference train \
    --resolutions 224 --batch-sizes 128 --scan-impl triton mamba --amp bf16 \
    --compile reduce-overhead --no-compare-deit --json "$OUT/tool_224.json"
  run 120 0 env $B python3 tools/benchmark.py --device cuda --model trunk --mode inference \
    --resolutions 1024 --batch-sizes 1 --scan-impl triton mamba --amp bf16 \
    --compile reduce-overhead --no-compare-deit --json "$OUT/tool_1024.json"
fi
if has curves; then
  stamp "training curves: triton vs mamba-ssm"
  run 110 0 env $B python3 dev/benchmarks/train_curve.py --impls triton mamba --iters 200 --batch 32 \
    --json "$OUT/curves.json"
fi
if has deit; then
  stamp "DeiT-Tiny: eager and CUDA graphs"
  run 150 20 python3 dev/benchmarks/bench_gpu.py --impls none --parts infer train --deit \
    --compile none reduce-overhead --json "$OUT/bench.json"
fi
stamp "done"
