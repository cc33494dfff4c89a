#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV_DIR=${VENV_DIR:-.venv}
exec "$VENV_DIR/bin/python" -m pytest "$@"
