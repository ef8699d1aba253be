#!/usr/bin/env bash
# Makes (or reuses) the Python environment that `make demo` and `make test` run in, and the
# Fashion-MNIST OS package. The torch + torchvision that timm pulls from PyPI weigh about 5.5 GB,
# so an environment that already imports everything is reused, and only vitmix itself is
# re-installed (editable, no dependencies) when the checkout it points at has changed.
set -euo pipefail

venv="${1:?usage: setup_env.sh VENV_DIR}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
data_dir=/usr/share/datasets/fashion-mnist

if [ ! -f "$data_dir/train-images-idx3-ubyte.gz" ]; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    python3 -m venv "$venv"
fi
py="$venv/bin/python"

# The stamp records which requirements and which checkout the environment was made for.
want="$(sha256sum "$repo/pyproject.toml" | cut -c1-16) $repo"
stamp="$venv/.vitmix-stamp"
deps_ok() {
    "$py" - <<'PY' 2>/dev/null
import importlib
for name in ("torch", "torchvision", "timm", "safetensors", "yaml", "tqdm", "matplotlib",
             "pytest", "ruff", "onnx", "onnxruntime"):
    importlib.import_module(name)
PY
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && deps_ok; then
    exit 0
fi
if deps_ok && [ -f "$stamp" ] && [ "$(cut -d' ' -f1 "$stamp")" = "$(echo "$want" | cut -d' ' -f1)" ]; then
    echo "setup: environment complete, pointing vitmix at $repo"
    "$py" -m pip install -q --no-deps -e "$repo"
else
    echo "setup: installing vitmix and its dependencies into $venv (first time: several minutes)"
    "$py" -m pip install -q --upgrade pip
    "$py" -m pip install -q -e "$repo[dev,export]"
fi
echo "$want" > "$stamp"
