#!/usr/bin/env bash
# The full benchmark of issue 3 (about 5 minutes on 2 cores), with the JAX anchor and the exported step.
# Writes benchmarks/results.json and prints the table the README quotes.
#   benchmarks/run.sh [s5ssm bench options]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${S5SSM_VENV:-.venv}"
./run.sh s5ssm tasks >/dev/null  # creates the environment if needed
"$venv/bin/python" -m pip install --quiet -e ".[bench,deploy]"  # JAX; onnxruntime for the exported step
exec "$venv/bin/s5ssm" bench --json benchmarks/results.json "$@"
