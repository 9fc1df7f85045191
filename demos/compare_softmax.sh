#!/usr/bin/env bash
# Train the `cpu` preset once with plain softmax attention and once with ConSmax, then print both
# summaries side by side (val loss, parameters, tokens/s): the sandbox's basic question in one command.
#   Usage: bash demos/compare_softmax.sh [train.py flags, e.g. --max_iters 500]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
[ -f data/shakespeare_char/meta.json ] || "$PY" data/shakespeare_char/prepare.py
for sm in softmax consmax; do
  "$PY" train.py --preset cpu --softmax_variant_attn "$sm" --out_dir "out/demo_$sm" --overwrite "$@"
done
"$PY" analysis/summarize_runs.py out --filter 'demo_'
