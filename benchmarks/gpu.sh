#!/usr/bin/env bash
# The GPU check of issue 19 in one command, on a Linux machine with one CUDA GPU and the
# package registry (a few minutes after the installs):
#   1. a virtual environment with torch from the registry (its CUDA build on Linux) and
#      s5ssm with the gpu and test extras;
#   2. the suite's CUDA tests (`pytest -m cuda`: the Triton kernels against the reference
#      on CUDA tensors, the model's CUDA paths without numba, bf16 training, the bench);
#   3. `s5ssm bench --device cuda` (scan, layer, irregular, memory), written to
#      benchmarks/gpu-results.json;
#   4. a one-epoch Path-X smoke run (configs/pathx-smoke.yaml) on CUDA.
# Everything is printed; the exit code is non-zero if any step failed (the later steps
# still run).
#   benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${S5SSM_GPU_VENV:-.venv-gpu}"
python="$venv/bin/python"
status=0
step() { echo; echo "== $*"; }

step "environment ($venv)"
if [ ! -x "$python" ]; then
    python3 -m venv "$venv" || exit 1
fi
"$python" -m pip install --quiet "torch==2.13.0" || exit 1
"$python" -m pip install --quiet -e ".[gpu,test]" || exit 1
nvidia-smi || true
"$python" - <<'PY' || exit 1
import torch, triton
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}")
if not torch.cuda.is_available():
    raise SystemExit("CUDA is not available to torch: this script needs a GPU")
print("GPU:", torch.cuda.get_device_name())
PY

step "CUDA tests (pytest -m cuda)"
"$python" -m pytest -m cuda -q -rs -p no:cacheprovider || status=1

step "s5ssm bench --device cuda"
"$venv/bin/s5ssm" bench --device cuda --sections scan layer irregular memory \
    --json benchmarks/gpu-results.json || status=1

step "Path-X smoke run on CUDA (configs/pathx-smoke.yaml)"
run_dir="$(mktemp -d)/pathx-smoke"
"$venv/bin/s5ssm" train --config configs/pathx-smoke.yaml --device cuda --quiet --run_dir "$run_dir" || status=1

step "done: exit status $status"
exit $status
