#!/usr/bin/env bash
# Post-training quantisation of the quickstart run, no retraining: validation loss against bits for the
# weights, the activations, the normaliser's sites and all of them (a table, RUN/ptq_sweep.json and
# RUN/ptq_sweep.png), then an 8-bit weights + activations integer export checked against the fake-quantised
# model (RUN/int8/). A minute or two on 2 cores for the cpu preset's run.
#   Usage: bash demos/ptq_curve.sh [RUN, default out/quickstart] [ptq.py flags for the sweep, e.g. --eval_iters 50]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
RUN="out/quickstart"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then RUN="$1"; shift; fi
if [ ! -f "$RUN/ckpt_best.pt" ] && [ ! -f "$RUN/ckpt_last.pt" ]; then
  echo "error: no trained run in $RUN; make it first with: bash demos/quickstart.sh" >&2
  exit 2
fi
"$PY" analysis/ptq.py --out_dir "$RUN" --sweep 32,16,8,6,4,3,2 "$@"
"$PY" analysis/ptq.py --out_dir "$RUN" --weight_bits 8 --act_bits 8 --export "$RUN/int8"
echo "results: $RUN/ptq_sweep.json, $RUN/ptq_sweep.png, $RUN/int8/ (model.int.safetensors, quant.json)"
