"""Load a recipe script (recipes/<name>.py) as a module, so tests call its main() in-process; and kill a
recipe part-way (``killed_at_call``) to test what it leaves behind and how it resumes."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class KilledForTest(RuntimeError):
    pass


@contextlib.contextmanager
def killed_at_call(owner, name: str, n: int):
    """``owner.name`` (a method) raises KilledForTest at its n-th call in this block, as a process killed
    there would stop; the earlier calls run as usual. Restored when the block ends."""
    original, calls = getattr(owner, name), []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KilledForTest(f"{name}: killed at call {n}")
        return original(*args, **kwargs)

    setattr(owner, name, dies)
    try:
        yield
    finally:
        setattr(owner, name, original)
