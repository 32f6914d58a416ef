#!/usr/bin/env bash
# The GPU device check of issue 16, for a GPU machine with torch, torchvision and cupy-cuda13x
# preinstalled and no network. Installs this checkout, then runs benchmarks/device_check.py,
# which writes the JSON (versions, GPU tests, float64 parity GPU = CPU path, speed against
# torch/torchvision with TF32 off). Budget: under 8 minutes.
#
#   benchmarks/device_check.sh [out.json] [device_check.py flags, e.g. --skip tests]
#   benchmarks/device_check.sh --fetch-wheels   # beforehand, on a machine with network: puts the
#                                               # wheels the GPU machine may lack into wheels/
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch-wheels" ]; then
    # Python 3.12, manylinux x86_64: numba-cuda with its NVVM wheel, and our runtime dependencies
    python -m pip download --dest wheels --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        "numba-cuda[cu13]>=0.30" numba pycocotools threadpoolctl tqdm
    exit 0
fi
out="${1:-device_check.json}"
shift || true
links=()
if [ -d wheels ]; then links=(--no-index --find-links wheels); fi
# what is preinstalled (torch, cupy, numpy, ...) is kept; the rest comes from wheels/
python -m pip install -q "${links[@]}" --no-build-isolation -e ".[gpu-cuda13]" ||
    echo "device_check.sh: installing dependencies failed; continuing with what is installed" >&2
python -c "import numba.cuda, cupy" || { echo "device_check.sh: numba-cuda or cupy missing (see --fetch-wheels)" >&2; exit 1; }
# kernels launch on CuPy's current stream: no synchronisation per launch
export NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0
timeout 470 python benchmarks/device_check.py --out "$out" "$@"
