"""Data sets and their preparation: text -> train.bin / val.bin / meta.json (see data/prepare.py)."""
