"""Files and folders that are either whole or absent: written under a temporary name, then renamed.

A killed process, a full disk or an exception mid-write never leaves a file or folder that looks complete
under its real name, and a reader never sees half of one. The temporary is a sibling (same file system,
so the rename is atomic) whose name ends in ``.tmp`` or ``.tmp-<pid>``."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file name to write ``path``'s content to (for writers that take a path or stream, e.g.
    ``torch.save``); it replaces ``path`` when the block ends without an error and is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")  # per process: two writers never share one
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """``path`` holds ``text`` (UTF-8), whole, or keeps what it held before."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_folder(folder: Path, shared: bool = False) -> Iterator[Path]:
    """A temporary sibling folder to fill; when the block ends without an error it becomes ``folder``.

    A folder this process owns (``shared=False``: checkpoints, copies) is replaced: the temporary is
    ``<name>.tmp`` (one left by a killed writer is cleared first), and an existing ``folder`` is moved
    aside to ``<name>.old`` for the rename and then removed. A cache that concurrent processes may fill
    with the same content (``shared=True``) gets one temporary per process, and the first rename wins:
    the others find ``folder`` in place and discard theirs."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + (f".tmp-{os.getpid()}" if shared else ".tmp"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if shared:
            try:
                tmp.rename(folder)
            except OSError:  # another process finished the same folder first
                pass
            return
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
