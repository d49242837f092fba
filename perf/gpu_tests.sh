#!/usr/bin/env bash
# The CUDA half of the test suite, for a machine with a GPU and its own torch/transformers but none of
# ftrace's other packages: pydantic and typer wheels are carried in .whl/ (see docs on the device
# tool). Lucene/Qdrant tests are not run there (-m "not slow" and the chosen files need neither).
# Usage: bash perf/gpu_tests.sh OUT_DIR
set -uo pipefail
out=${1:-/tmp/gpu-tests}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
} | tee "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider -m "not slow" -rs \
  tests/test_device.py tests/test_dtype.py tests/test_train.py tests/test_gradients.py tests/test_answers.py \
  2>&1 | tee "$out/pytest.log"
