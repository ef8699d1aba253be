#!/usr/bin/env bash
# Runs the pinned uv, installing it first into a small environment of its own (nothing
# system-wide): `bash scripts/uv.sh lock`, `bash scripts/uv.sh sync --frozen`, ...
set -euo pipefail

uv_version=0.13.8  # the README's set-up commands name the same version
uv_home="${XDG_CACHE_HOME:-$HOME/.cache}/vitmix/uv-$uv_version"
if [ ! -x "$uv_home/bin/uv" ]; then
    echo "setup: installing uv $uv_version into $uv_home" >&2
    rm -rf "$uv_home"
    python3 -m venv "$uv_home"
    "$uv_home/bin/python" -m pip install -q --disable-pip-version-check "uv==$uv_version"
fi
exec "$uv_home/bin/uv" "$@"
