"""lm-eval `custom_dataset` for the task YAMLs of this folder: JSONL files named relative to this folder.

lm-eval 0.4.13 hands `dataset_kwargs` of a YAML to `datasets.load_dataset`, which resolves relative
`data_files` against the working directory, so `lm-eval --include_path data/lm_eval_tasks` would only
work from the repository root. The YAMLs therefore name this loader (`custom_dataset: !function
jsonl_dataset.load`; lm-eval calls it with the task's metadata and dataset_kwargs as keyword arguments)
and it resolves `data_files` against this folder. It reads the files itself into in-memory
`datasets.Dataset`s: no network, no Hugging Face cache, works with HF_DATASETS_OFFLINE=1.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """{split: file relative to this folder} -> DatasetDict of the JSONL rows of each file."""
    splits = {}
    for split, name in data_files.items():
        path = HERE / name
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
