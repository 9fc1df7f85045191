#!/usr/bin/env bash
# The quickstart: set up (if needed), prepare Shakespeare at character level, train the `cpu` preset
# (about 3 minutes on 2 cores) and print a sample.   Usage: bash demos/quickstart.sh [train.py flags]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
[ -f data/shakespeare_char/meta.json ] || "$PY" data/shakespeare_char/prepare.py
"$PY" train.py --preset cpu --out_dir out/quickstart --overwrite "$@"
echo "== a sample from out/quickstart"
"$PY" sample.py --out_dir out/quickstart --max_new_tokens 500 --start "ROMEO:"
