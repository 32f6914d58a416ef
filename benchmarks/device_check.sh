#!/usr/bin/env bash
# The GPU device check of issue 16, for a GPU machine with torch, torchvision and cupy-cuda13x
# preinstalled and no network: installs this checkout without dependencies, then runs
# benchmarks/device_check.py, which writes device_check.json (versions, GPU tests, float64 parity
# GPU = CPU path, speed against torch/torchvision with TF32 off). Budget: under 8 minutes.
#   benchmarks/device_check.sh [out.json]        extra arguments go to device_check.py (e.g. --cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-device_check.json}"
shift || true
# wheels brought along for what the machine lacks (numba-cuda, pycocotools, ...), if any
if [ -d wheels ]; then python -m pip install -q --no-index --find-links wheels numba-cuda pycocotools || true; fi
python -m pip install -q --no-deps --no-build-isolation -e . || true
export NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0  # kernels launch on CuPy's stream: no extra synchronisation
timeout 470 python benchmarks/device_check.py --out "$out" "$@"
