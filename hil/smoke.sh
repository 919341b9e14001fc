#!/usr/bin/env bash
# Boot the HIL machine (or use the host's vcan0) and run hil/smoke.py in it.
# usage: hil/smoke.sh            (uses <repo>/.venv/bin/python if present)
set -euo pipefail
HIL_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(dirname -- "$HIL_DIR")
PY=${HIL_PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
cd "$REPO"
exec "$HIL_DIR/run-in-uml.sh" "$PY" "$HIL_DIR/smoke.py"
