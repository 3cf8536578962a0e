"""The config reference in docs/config-reference.md is the one generated from the config dataclasses, and every
key has a meaning written beside its declaration."""

from __future__ import annotations

from pathlib import Path

from genrec.cli import main
from genrec.config_reference import markdown, rows

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_every_config_key_is_documented():
    undocumented = [key for key, _, meaning in rows() if not meaning]
    assert not undocumented, f"add a comment beside these fields in genrec/config.py: {undocumented}"


def test_docs_config_reference_is_the_generated_one():
    text = REFERENCE.read_text()
    start = text.index("| key | default | meaning |")
    lines = text[start:].split("\n")
    table = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("|"))]) + "\n"
    assert table == markdown(), (
        "docs/config-reference.md is stale: paste the output of `genrec config-reference` over its table")


def test_cli_prints_the_reference(capsys):
    assert main(["config-reference"]) == 0
    out = capsys.readouterr().out
    assert out == markdown() and "| `train.gradient_checkpointing` | `false` |" in out
