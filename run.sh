#!/usr/bin/env bash
# Set up a virtual environment (CPU build of torch) and run s5ssm in it.
#   ./run.sh train [s5ssm train options]   the main job: train and evaluate an S5 model
#   ./run.sh test  [pytest options]        the test suite (what CI runs)
#   ./run.sh s5ssm ARGS...                 any other s5ssm command (eval, predict, tasks, bench)
set -euo pipefail
cd "$(dirname "$0")"
venv="${S5SSM_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.s5ssm-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # torch is pinned to the CPU wheel here; the library itself accepts torch>=2.3.
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet -e ".[test,plot]"
    touch "$stamp"
fi
command="${1:-train}"
shift || true
case "$command" in
    train) exec "$venv/bin/s5ssm" train "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    s5ssm) exec "$venv/bin/s5ssm" "$@" ;;
    *) echo "usage: ./run.sh train|test|s5ssm [args...]" >&2; exit 2 ;;
esac
