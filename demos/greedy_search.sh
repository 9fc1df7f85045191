#!/usr/bin/env bash
# The greedy efficiency search end to end: grow a tiny model (2 layers x 64 wide) by depth or width,
# adopting at each step the change that buys the most val loss per added parameter, then plot the
# trajectory. 2 steps x 3 runs of 15-50 s each: about 2-5 minutes on 2 CPU cores.
#   Usage: bash demos/greedy_search.sh [search flags, e.g. --steps 3] [-- train.py flags, e.g. --max_iters 100]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
[ -f data/shakespeare_char/meta.json ] || "$PY" data/shakespeare_char/prepare.py
"$PY" optimization_and_search/hyperparam_search.py --spec hp_searches/greedy_demo_tiny.yaml \
  --name demo_greedy --log out/demo_greedy/search.yaml --out_root out/demo_greedy --overwrite "$@"
"$PY" analysis/plot_search.py out/demo_greedy/search.yaml --out out/demo_greedy/search.png
echo "== the log: out/demo_greedy/search.yaml; the plot: out/demo_greedy/search.png"
