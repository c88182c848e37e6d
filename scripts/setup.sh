#!/usr/bin/env bash
# Create or update .venv with the pinned stack. Idempotent: a ready .venv takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.prunebench-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && $VENV/bin/python -c "import mmcv.ops, mmdet, prunebench" 2>/dev/null; then
  echo "setup: .venv is ready (delete $STAMP to force a reinstall)"
  exit 0
fi

command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "prunebench needs Python 3.11"' \
  || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

echo "setup: [1/4] build tools"
$PIP install -q --upgrade pip 'setuptools<70' wheel ninja
echo "setup: [2/4] torch 2.9.1 + torchvision 0.24.1"
$PIP install -q torch==2.9.1 torchvision==0.24.1

if ! $VENV/bin/python -c "import mmcv.ops" 2>/dev/null; then
  echo "setup: [3/4] building MMCV 2.1.0 with its ops from source (about 7 minutes on 2 cores; cached afterwards)"
  if command -v nvcc >/dev/null && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    export FORCE_CUDA=1
    echo "setup: GPU and nvcc found: building MMCV's CUDA ops too"
  fi
  $PIP install -q mmengine==0.10.7
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP install --no-build-isolation mmcv==2.1.0
else
  echo "setup: [3/4] MMCV with ops already installed"
fi

echo "setup: [4/4] prunebench (editable) with test extras"
$PIP install -q --no-build-isolation -e '.[test]'
$VENV/bin/python -c "import mmcv.ops, mmdet, prunebench"
echo "$want" > "$STAMP"
echo "setup: done"
