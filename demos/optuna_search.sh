#!/usr/bin/env bash
# An Optuna search end to end on CPU (~3-5 min on 2 cores): a single-objective study over attention
# normalisers, depth, width and learning rate with median pruning, continued from its SQLite storage;
# then a two-objective study (val loss vs MACs per token) that prints its Pareto front.
#   Usage: bash demos/optuna_search.sh [train.py flags for every trial, e.g. --max_iters 300]
# Results: exploration_logs/demo_optuna*.yaml (one document per trial), out/optuna/demo_optuna*/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
[ -f data/shakespeare_char/meta.json ] || "$PY" data/shakespeare_char/prepare.py
SEARCH=optimization_and_search/optuna_search.py
SHORT=(--max_iters 100 --lr_decay_iters 100 --eval_interval 25 "$@")

# 4 trials, then the same command asks for 6: the study resumes and runs 2 more (a killed run resumes the same way)
"$PY" $SEARCH -c hp_searches/optuna_cpu.yaml --study_name demo_optuna --n_trials 4 --n_startup_trials 2 -- "${SHORT[@]}"
"$PY" $SEARCH -c hp_searches/optuna_cpu.yaml --study_name demo_optuna --n_trials 6 --n_startup_trials 2 -- "${SHORT[@]}"

# two objectives: NSGA-II, no pruning, the Pareto front printed and saved
"$PY" $SEARCH -c hp_searches/optuna_cpu_pareto.yaml --study_name demo_optuna_pareto --n_trials 6 \
  --objectives best_val_loss macs_per_token -- "${SHORT[@]}"

if [ -f analysis/plot_sweep.py ]; then  # the sweep plots read the same log format
  "$PY" analysis/plot_sweep.py exploration_logs/demo_optuna_pareto.yaml || true
fi
