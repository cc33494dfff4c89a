#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the test suite in TEST_WORKERS processes [default: 2,
# the cores of the project's machines; 0 = in this process], each taking whole test files so
# that a file's fixtures are built once. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
VENV_DIR=${VENV_DIR:-.venv}
exec "$VENV_DIR/bin/python" -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
