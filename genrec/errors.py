"""User-facing errors.

Every error a user can cause (bad config, data, template, checkpoint) is a
``GenrecError`` whose message names the file/line/key, what was expected and what
was found. Recipes print these without a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class GenrecError(Exception):
    """An error caused by user input; the message is meant to be read as is."""


class ConfigError(GenrecError):
    pass


class DataError(GenrecError):
    pass


class TemplateError(GenrecError):
    pass


class CheckpointError(GenrecError):
    pass


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
