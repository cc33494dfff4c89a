#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and starts the app over a folder of run directories, on localhost:
#   bash scripts/app.sh [RUNS_DIR] [streamlit flags, e.g. --server.port 8502]
# RUNS_DIR defaults to runs/compare (what bash scripts/demo.sh writes); every run directory
# under it is found. Open the URL it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV_DIR=${VENV_DIR:-.venv}
RUNS_DIR=${1:-runs/compare}
shift $(( $# > 0 ? 1 : 0 ))
# Server settings (localhost only, headless, no usage statistics): .streamlit/config.toml.
exec "$VENV_DIR/bin/python" -m streamlit run app/main.py "$@" -- "$RUNS_DIR"
