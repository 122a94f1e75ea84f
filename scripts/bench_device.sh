#!/usr/bin/env bash
# One-call device benchmark (issue #10 item 9): installs what is missing, then runs the three parts of
# scripts/bench_device.py (parity, sampler, train), each in its own process under its own `timeout`, into one
# JSON ($OUT/bench_device.json; OUT defaults to ./benchmarks/device). Non-interactive; run from anywhere:
#
#   bash scripts/bench_device.sh
#   OUT=/tmp/bench bash scripts/bench_device.sh --hbm_gbps 4800     # extra args go to every part
#
# Environment:
#   OUT                    output folder (default ./benchmarks/device)
#   PYTHON                 interpreter (default python)
#   BENCH_NO_INSTALL=1     never pip install anything
#   BENCH_INSTALL_TORCH=1  pip install torch==2.13.0 if torch does not import (the optional transformers
#                          reference of the parity part; off by default: PyPI's torch brings its own CUDA
#                          wheels, which can pull the nvidia-* versions JAX's CUDA plugin needs)
#   BENCH_QUICK=1          tiny shapes (also chosen automatically when no GPU is visible, unless BENCH_FULL=1)
#   T_PARITY T_SAMPLER T_TRAIN   per-part timeouts in seconds (default 90 / 210 / 180: 8 minutes at most)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-./benchmarks/device}
mkdir -p "$OUT"
JSON="$OUT/bench_device.json"
T_PARITY=${T_PARITY:-90}
T_SAMPLER=${T_SAMPLER:-210}
T_TRAIN=${T_TRAIN:-180}
log() { echo "[bench_device.sh $(date +%H:%M:%S)] $*"; }

platform() {   # the platform of jax.devices()[0], or "none" if JAX does not import
  "$PY" - 2>/dev/null <<'EOF' | tail -n 1
import jax
print(jax.devices()[0].platform)
EOF
}

if [ "${BENCH_NO_INSTALL:-0}" != "1" ]; then
  if ! "$PY" -c "import flax, optax, transformers, jaxr1.models, jaxr1.rl.learner, jaxr1.sampling" >/dev/null 2>&1; then
    log "installing the package: pip install -e ."
    timeout 600 "$PY" -m pip install -q -e . || log "pip install -e . failed (continuing)"
  fi
  P=$(platform)
  if [ "$P" != "gpu" ] && { command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; }; then
    V=$("$PY" -c "import jax; print(jax.__version__)" 2>/dev/null | tail -n 1)
    log "an NVIDIA GPU is present but jax.devices() shows '$P': pip install jax[cuda12]==$V"
    timeout 900 "$PY" -m pip install -q "jax[cuda12]==$V" || log "pip install jax[cuda12]==$V failed (continuing)"
  fi
  if [ "${BENCH_INSTALL_TORCH:-0}" = "1" ] && ! "$PY" -c "import torch" >/dev/null 2>&1; then
    log "pip install torch==2.13.0 (optional transformers reference)"
    timeout 600 "$PY" -m pip install -q torch==2.13.0 || log "no torch: the parity part compares against JAX on CPU only"
  fi
fi

P=$(platform)
log "jax platform: ${P:-none}"
QUICK=()
if [ "${BENCH_QUICK:-0}" = "1" ] || { [ "$P" != "gpu" ] && [ "${BENCH_FULL:-0}" != "1" ]; }; then
  log "no GPU (or BENCH_QUICK=1): tiny shapes (--quick)"
  QUICK=(--quick)
fi

rm -f "$JSON"
run_part() {   # name, timeout, extra args
  local name=$1 limit=$2 rc
  shift 2
  log "part $name (timeout $limit s)"
  timeout --kill-after=10 "$limit" "$PY" scripts/bench_device.py --part "$name" --merge --out "$JSON" \
    ${QUICK[@]+"${QUICK[@]}"} "$@"
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    "$PY" scripts/bench_device.py --out "$JSON" --record-error "$name" "timeout: killed after $limit s (exit $rc)"
  elif [ $rc -ne 0 ]; then
    "$PY" scripts/bench_device.py --out "$JSON" --record-error "$name" "exit code $rc (see the log above)"
  fi
}
run_part parity "$T_PARITY" "$@"
run_part sampler "$T_SAMPLER" "$@"
run_part train "$T_TRAIN" "$@"

echo
"$PY" scripts/bench_device.py --out "$JSON" --table
echo "JSON: $(cd "$(dirname "$JSON")" && pwd)/$(basename "$JSON")"
