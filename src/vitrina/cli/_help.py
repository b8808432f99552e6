"""Command help as the terminal should wrap it.

Typer's help keeps a docstring's single line breaks, so a line written 90 characters long in
the source breaks in two in an 80-column terminal, mid-sentence. :func:`reflow` joins each
prose paragraph into one line (the terminal wraps it to its width) and each list item with
its continuation lines, and keeps indented lines (examples, tables) as written.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

__all__ = ["reflow", "reflow_commands"]

_ITEM = re.compile(r"^(?:[-*•]|\d+[.)])\s")  # a list item: "- ", "* ", "1. ", "2) "


def reflow(text: str) -> str:
    """``text`` (a docstring) with prose paragraphs on one line each (module docstring).
    A paragraph holding ``\\b`` or ``\\f`` (click's markers) is kept as written."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    out = []
    for para in paragraphs:
        if "\b" in para or "\f" in para:
            out.append(para)
            continue
        lines: list[str] = []
        for line in para.splitlines():
            joins = lines and not line[:1].isspace() and not _ITEM.match(line)
            if joins and not lines[-1][:1].isspace():
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line.rstrip())
        out.append("\n".join(lines))
    return "\n\n".join(out)


def reflow_commands(app: Any) -> None:
    """:func:`reflow` the help of every command of a Typer ``app`` and of its sub-apps."""
    for info in app.registered_commands:
        text = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if text:
            info.help = reflow(text)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_commands(group.typer_instance)
