"""Print the registered components as a Markdown table, or refresh README.md's copy of it.

    python -m variations              # print the table
    python -m variations --readme     # rewrite the table between the markers in README.md

README.md's table is generated here from the registry (never typed by hand); a test checks that it
is current.
"""
from __future__ import annotations

import sys
from pathlib import Path

from variations.registry import KINDS, describe

START, END = "<!-- variants:start (python -m variations --readme) -->", "<!-- variants:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def markdown_table() -> str:
    from gpt_conf import component_flags
    flag_of = {kind: component_flags(kind)[0] for kind in KINDS}
    lines = ["| flag | name | what it is |", "| --- | --- | --- |"]
    for kind in KINDS:
        for name, doc in describe(kind):
            lines.append(f"| `--{flag_of[kind]}` | `{name}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def readme_with_table(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


if __name__ == "__main__":
    if "--readme" in sys.argv[1:]:
        README.write_text(readme_with_table(README.read_text()))
    else:
        print(markdown_table())
