#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): the CUDA tests, short trainings, a kill and
# resume, torchrun over NCCL, and the SCHEMEformer-S12 / MetaFormer-S12 tables, in one call of at
# most 8 minutes on one GPU, on the PyTorch already installed there (it needs no network).
#
#   scripts/gpu_check.sh [OUT]            on a GPU machine (default OUT: runs/gpu_check)
#   scripts/gpu_check.sh --smoke [OUT]    every part on the CPU, tiny (tests/test_gpu_check.py)
#
# What it reads beside the checkout, when present (a GPU machine without network gets them
# carried in the working tree, in .gpu/, which git ignores):
#   .gpu/wheels/*.whl        Python packages that machine lacks (timm, at the version tested)
#   .gpu/fashion-mnist/      the Fashion-MNIST idx files ($VITMIX_FASHION_MNIST_DIR wins; without
#                            either, Debian's /usr/share/datasets/fashion-mnist)
# The smoke mode runs in the environment it is started from and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
smoke=()
if [ "${1:-}" = "--smoke" ]; then
    smoke=(--smoke)
    shift
fi
out=${1:-runs/gpu_check}
data=/usr/share/datasets/fashion-mnist
[ -d .gpu/fashion-mnist ] && data=.gpu/fashion-mnist
data=${VITMIX_FASHION_MNIST_DIR:-$data}
if [ ${#smoke[@]} -eq 0 ] && compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" \
        .gpu/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" benchmarks/gpu_check.py --out "$out" --data-dir "$data" "${smoke[@]}" \
    ${VITMIX_GPU_CHECK_DEADLINE:+--deadline "$VITMIX_GPU_CHECK_DEADLINE"}
