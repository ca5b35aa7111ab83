#!/usr/bin/env bash
# Creates .venv and installs the framework into it. Idempotent: a second run with an
# unchanged pyproject.toml does nothing. torch==2.13.0 goes first, on its own, so that no
# later package can pull a multi-GB CUDA build of torch (see PLATFORM notes in README).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.setup-stamp
want=$(sha256sum pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing into .venv (first time: ~1-2 minutes)"
  python -m pip install -q --upgrade pip
  python -m pip install -q torch==2.13.0
  python -m pip install -q -e ".[dev,mo,games]"
  echo "$want" > "$stamp"
fi
