#!/usr/bin/env bash
# Gradient throughput on a GPU machine: perf/gradient_throughput.py --device cuda with bergson in the same
# run, on SmolLM2-135M's architecture with random weights (the weights are not brought to that machine).
# Needs, in the working tree: .whl/ with the wheels of perf/gpu_wheels.txt plus pydantic and typer (carried),
# and .gpu/smollm2-config (python perf/export_model_config.py .gpu/smollm2-config).
# Usage: bash perf/gpu_throughput.sh OUT_DIR [more gradient_throughput.py options, e.g. --dtype bfloat16]
# Writes OUT_DIR/gradient_throughput-<card>.{json,md}, device.txt and log.txt.
set -uo pipefail
out=${1:-/tmp/gpu-throughput}
shift || true
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 perf/gradient_throughput.py --device cuda --random-init .gpu/smollm2-config --examples 1024 \
  --naive-examples 16 --out-dir "$out" "$@" 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
