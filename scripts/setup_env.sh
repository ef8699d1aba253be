#!/usr/bin/env bash
# Builds the Python environment that `make demo` and `make test` run in, exactly as locked, and
# installs the Fashion-MNIST OS package the main job trains on.
#
#   setup_env.sh VENV            the tested set: uv.lock (uv sync --frozen)
#   setup_env.sh VENV oldest     the oldest supported set: requirements/oldest.txt
#
# uv installs from its cache (~/.cache/uv) by hard links, so a fresh folder takes seconds once the
# wheels were downloaded once; with an empty cache it downloads about 3 GB (PyTorch's CUDA build,
# which runs on the CPU too).
set -euo pipefail

venv="${1:?usage: setup_env.sh VENV_DIR [locked|oldest]}"
lock="${2:-locked}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
data_dir=/usr/share/datasets/fashion-mnist

case "$lock" in
    locked|oldest) ;;
    *) echo "setup: unknown set '$lock'; expected 'locked' or 'oldest'" >&2; exit 2 ;;
esac

if [ ! -f "$data_dir/train-images-idx3-ubyte.gz" ]; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

uv=(bash "$repo/scripts/uv.sh")
cd "$repo"
if [ "$lock" = locked ]; then
    UV_PROJECT_ENVIRONMENT="$venv" "${uv[@]}" sync --quiet --frozen --extra dev --extra export --extra data
else
    [ -x "$venv/bin/python" ] || "${uv[@]}" venv --quiet "$venv"
    VIRTUAL_ENV="$venv" "${uv[@]}" pip sync --quiet requirements/oldest.txt
    VIRTUAL_ENV="$venv" "${uv[@]}" pip install --quiet --no-deps -e "$repo"
fi

"$venv/bin/python" - "$lock" <<'PY'
import platform, sys
from importlib.metadata import version
names = ("torch", "torchvision", "timm", "numpy", "safetensors", "onnx", "onnxruntime", "webdataset",
         "datasets", "pytest")
print(f"setup: {sys.argv[1]} set, Python {platform.python_version()}, "
      + ", ".join(f"{n} {version(n)}" for n in names))
PY
