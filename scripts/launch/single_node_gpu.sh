#!/usr/bin/env bash
# One node, all its GPUs (e.g. 8xH100), one process: the mesh spans the local devices.
#   scripts/launch/single_node_gpu.sh configs/qwen2_5_vl_3b_geoqa.yaml model.path=/models/Qwen2.5-VL-3B-Instruct
set -euo pipefail
config=${1:?usage: $0 CONFIG.yaml [key=value ...]}; shift
pip install -e . "jax[cuda12]"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
python -m jaxr1.train --config "$config" --dry_run "$@"          # fails fast if it cannot fit
exec python -m jaxr1.train --config "$config" "$@"
