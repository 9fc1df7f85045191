#!/usr/bin/env bash
# An exploration sweep end to end: show the run list, run it two at a time, run it again (nothing left to
# do: finished runs are skipped), export a CSV and plot val loss against parameters and against MACs.
# The softmax sweep of explorations/ cut to 100 steps by default (about 5 minutes on 2 cores).
#   Usage: bash demos/sweep.sh [sweep file] [runner flags, e.g. --set max_iters=300 --jobs 4]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
[ -f data/shakespeare_char/meta.json ] || "$PY" data/shakespeare_char/prepare.py
SWEEP="explorations/softmax_cpu.yaml"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then SWEEP="$1"; shift; fi
NAME="demo_$(basename "$SWEEP" .yaml)"
RUN=("$PY" optimization_and_search/run_experiments.py -c "$SWEEP" --name "$NAME" --jobs 2 --set max_iters=100 --set lr_decay_iters=100 "$@")
"${RUN[@]}" --dry_run
"${RUN[@]}"
"${RUN[@]}" --csv "exploration_logs/$NAME.csv"   # resumes: every run is in the log already
"$PY" analysis/plot_sweep.py "exploration_logs/$NAME.yaml" --x num_params --out "exploration_logs/$NAME.png"
"$PY" analysis/plot_sweep.py "exploration_logs/$NAME.yaml" --x macs_per_token --out "exploration_logs/${NAME}_macs.png"
echo "results: exploration_logs/$NAME.yaml, exploration_logs/$NAME.csv, exploration_logs/$NAME.png"
