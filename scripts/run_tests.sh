#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the whole test suite on the CPU.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh tests/modeling -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest tests -q "$@"
