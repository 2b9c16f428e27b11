#!/usr/bin/env bash
# Creates .venv and installs entropy-rl into it (editable), with torch pinned
# to 2.13.0 so pip never resolves a CUDA build. Idempotent: re-running only
# installs what is missing.
#   bash scripts/setup.sh            # the package, envs (classic control, Box2D, Atari, MinAtar) and sweep extras
#   bash scripts/setup.sh --test     # plus the test extras (pytest, triton, entmax) and EnvPool
set -euo pipefail
cd "$(dirname "$0")/.."
extras="envs,sweep"
for arg in "$@"; do
  case "$arg" in
    --test) extras="$extras,test,envpool" ;;  # CI runs the EnvPool path (tests/rl/test_atari_backends.py)
    --bench) extras="$extras,bench,test,envpool" ;;
    *) echo "setup.sh: unknown option '$arg' (allowed: --test, --bench)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[$extras]"
