"""The config reference, generated from the config dataclasses: every key, its default, and the comment
written beside its declaration in genrec/config.py (plus its allowed values). docs/config-reference.md holds
this table (``genrec config-reference`` prints it; tests/test_config_reference.py keeps them equal)."""

from __future__ import annotations

import dataclasses
import inspect
import re

from genrec.config import CHOICES, Config

_FIELD = re.compile(r"^\s+(\w+):[^#]*?(?:#\s*(.*))?$")


def _comments(cls: type) -> dict[str, str]:
    """field name -> the comment on its declaration line (first line of a multi-line declaration)."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD.match(line)
        if match and match.group(1) not in out:
            out[match.group(1)] = (match.group(2) or "").strip()
    return out


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def rows() -> list[tuple[str, str, str]]:
    """(key, default, meaning) for every config key, in declaration order."""
    out = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        notes = _comments(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            meaning = notes.get(f.name, "")
            choices = CHOICES.get(f"{section.name}.{f.name}")
            if choices and not all(c in meaning for c in choices):
                meaning = f"{meaning} (one of: {', '.join(choices)})".strip()
            out.append((f"{section.name}.{f.name}", _show(default), meaning))
    return out


def markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | `{_cell(default)}` | {_cell(meaning)} |" for key, default, meaning in rows()]
    return "\n".join(lines) + "\n"
