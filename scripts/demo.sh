#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: TF full fine-tune vs JAX LoRA (+ a JAX linear
# probe) on the same split, then the evaluator's report. Offline defaults: the embedded sample and
# multilingual-e5-small (--preset all-minilm-l6-v2 for the English-only MiniLM). Extra arguments
# go to `python -m shared.jobs.compare` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV_DIR=${VENV_DIR:-.venv}
exec "$VENV_DIR/bin/python" -m shared.jobs.compare --probe "$@"
