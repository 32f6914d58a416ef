#!/usr/bin/env bash
# The GPU device check, for a GPU machine as it stands: its own torch, torchvision, cupy-cuda13x,
# numba and numba-cuda, and no network. Nothing is fetched and nothing is installed: the checkout
# is copied to a temporary folder where kernels/ is laid inside the package as
# tinymaskrcnn/kernels (what setup.py's package_dir does at install time), and run from there.
# Every result goes into OUT_DIR (the only files that come back from a GPU machine).
#
#   benchmarks/device_check.sh OUT_DIR            # tests, parity, speed: at most 6 minutes on an H100
#   benchmarks/device_check.sh OUT_DIR --quick    # tests and parity only: about 2 minutes
#   benchmarks/device_check.sh OUT_DIR --cpu      # dry run on the CPU path, tiny sizes (CI runs it)
#
# OUT_DIR receives device_check.json (rewritten after every section, so a run cut short keeps
# what it measured), tests.log (the whole pytest output) and summary.txt (what is printed last).
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: benchmarks/device_check.sh OUT_DIR [--quick] [--cpu]" >&2
    exit 2
fi
out="$(mkdir -p "$1" && cd "$1" && pwd)"
shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
scratch="$(mktemp -d)"  # the staged tree and the reference weights; removed on any exit
trap 'rm -rf "$scratch"' EXIT
stage="$scratch/tree"
mkdir -p "$stage"
(cd "$repo" && tar --exclude=./.git --exclude=./data_cache --exclude=./runs -cf - .) | tar -xf - -C "$stage"
rm -rf "$stage/tinymaskrcnn/kernels"
cp -r "$stage/kernels" "$stage/tinymaskrcnn/kernels"
cd "$stage"
export PYTHONPATH="$stage${PYTHONPATH:+:$PYTHONPATH}"  # the script runs from benchmarks/
# kernels launch on CuPy's current stream: no synchronisation per launch
export NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0
budget=360
case " $* " in *" --cpu "*) budget=300 ;; *" --quick "*) budget=170 ;; esac
timeout "$budget" python benchmarks/device_check.py --out-dir "$out" "$@"
