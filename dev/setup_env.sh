#!/usr/bin/env bash
# Create or complete the project virtualenv. Idempotent: installs only what is missing.
#   VENV=.venv PYTHON=python3 TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" dev/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
D2_WHEEL_SPEC=${D2_WHEEL_SPEC:-"sal-detectron2==0.7.2"}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

if ! has torch || ! has torchvision; then
  # The CUDA build of torch takes about 5.5 GB in the venv: say so before pip runs out of disk
  # half-way through and leaves a broken venv.
  need_gb=${SETUP_MIN_FREE_GB:-6}  # GiB
  free_kb=$(df -Pk "$VENV" | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
    echo "[setup] error: $TORCH_SPEC needs about $need_gb GiB free under $VENV;" \
      "$((free_kb / 1024)) MiB are free there (SETUP_MIN_FREE_GB overrides the check)" >&2
    exit 1
  fi
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip_q $TORCH_SPEC
fi

if ! has detectron2; then
  echo "[setup] installing Detectron2 ($D2_WHEEL_SPEC wheel; its compiled ops are not used)"
  pip_q installer "setuptools<81"
  tmp=$(mktemp -d)
  # The wheel is tagged cp310 only because of compiled ops we do not import: fetch it for 3.10
  # and unpack it with `installer`, which skips the tag check.
  "$PY" -m pip download -q --disable-pip-version-check --no-deps "$D2_WHEEL_SPEC" \
    --python-version 3.10 --only-binary=:all: -d "$tmp"
  "$PY" -m installer "$tmp"/*.whl
  rm -rf "$tmp"
fi

# The Detectron2 wheel's metadata pins numpy<2, which is wrong for this build (it works with
# numpy 2, and the tests run with it). Correct the installed record so that pip reports no
# conflict; idempotent, and only this one line of METADATA changes.
"$PY" - <<'PYEOF'
from importlib import metadata
from pathlib import Path

dist = metadata.distribution("sal-detectron2")
path = Path(next(f for f in dist.files if f.name == "METADATA").locate())
text = path.read_text()
fixed = text.replace("Requires-Dist: numpy<2\n", "Requires-Dist: numpy\n")
if fixed != text:
    path.write_text(fixed)
    print("[setup] corrected sal-detectron2's metadata pin numpy<2 (see INSTALL.md)")
PYEOF

# The package and every other dependency (editable, so the repository is what runs).
stamp="$VENV/.plainmamba-installed"
# setup.py also links plainmamba/model_zoo/configs to configs/ (not in git): rerun it if missing.
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ ! -e plainmamba/model_zoo/configs ]; then
  echo "[setup] installing plainmamba (editable) and its dependencies"
  pip_q -e ".[dev]"
  touch "$stamp"
fi
# The deploy extra (ONNX export, tools/deploy/export_model.py), pinned to tested versions. Binary
# wheels only, and neither package depends on torch, so this cannot replace the torch build.
DEPLOY_SPEC=${DEPLOY_SPEC:-"onnx==1.23.2 onnxruntime==1.31.1"}
if ! has onnx || ! has onnxruntime; then
  echo "[setup] installing $DEPLOY_SPEC (ONNX export)"
  # shellcheck disable=SC2086
  pip_q --only-binary=:all: $DEPLOY_SPEC
fi
# Numba compiles the scan kernels on first use and caches them beside the module; doing it here
# keeps that (about 20 s) out of the first `make demo`. Runs again only when no cache is there.
if ! ls plainmamba/ops/__pycache__/zigzag_scan_numba.*.nbi >/dev/null 2>&1; then
  "$PY" dev/compile_kernels.py
fi
"$PY" -c "import detectron2, torch, numba, plainmamba; print('[setup] ready: torch', torch.__version__, '| detectron2', detectron2.__version__, '| numba', numba.__version__)"
