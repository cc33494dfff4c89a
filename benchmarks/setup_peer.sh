#!/usr/bin/env bash
# Installs the peer-only packages (benchmarks/requirements.txt) into the project venv after a
# dry run shows that they only add packages: if any package already in the venv (a core pin
# or one of its dependencies) would be upgraded or downgraded, it refuses and changes nothing.
#   VENV_DIR   the project venv [default: .venv in the repo]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR=${VENV_DIR:-.venv}
pip=("$VENV_DIR/bin/python" -m pip)
plan=$("${pip[@]}" install --dry-run -r benchmarks/requirements.txt 2>/dev/null \
       | sed -n 's/^Would install //p')
installed=$("${pip[@]}" list --format=freeze 2>/dev/null | cut -d= -f1 | tr 'A-Z_' 'a-z-')
for wheel in $plan; do
  name=$(echo "$wheel" | sed -E 's/-[0-9][^-]*$//' | tr 'A-Z_' 'a-z-')
  if echo "$installed" | grep -qx "$name"; then
    echo "setup_peer: refusing: the peer would replace $name already in $VENV_DIR ($wheel)" >&2
    exit 1
  fi
done
echo "setup_peer: adding ${plan:-nothing}"
"${pip[@]}" install --quiet -r benchmarks/requirements.txt
echo "setup_peer: ready"
