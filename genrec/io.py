"""Files that are either whole or absent: written under a temporary name, then renamed over the target.

A killed process, a full disk or an exception mid-write never leaves a file that looks complete, and a
reader never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
