#!/usr/bin/env bash
# Faces per second on the CUDA GPU of this machine: spiga float32 / bfloat16 / float16 and the
# original spiga==0.0.6 (when it can be found or installed), batch 1, 32 and 128.
# Needs only the repository and torch (CUDA), numpy, opencv, pillow, safetensors: nothing is installed.
# Writes the table into docs/performance.md (between the gpu-results markers) and, when $OUT is
# set, to $OUT/gpu_results.md and $OUT/gpu_results.json. Takes about 2 to 5 minutes.
#
#   bash speed/gpu.sh                     # all of it
#   bash speed/gpu.sh --no-original       # ours only
#   bash speed/gpu.sh --compile           # also torch.compile (adds minutes of compiling)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} python speed/gpu.py --readme docs/performance.md "$@"
