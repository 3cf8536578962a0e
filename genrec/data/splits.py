"""Chronological histories, leave-one-out split and training examples (DESIGN §5).

Per user, interactions sorted by time (ties keep file order): the last item is
the test target, the second-to-last the validation target, the rest training.
Users with fewer than 3 interactions contribute training windows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genrec.data.catalog import Catalog
from genrec.errors import DataError


@dataclass(frozen=True)
class Example:
    user_id: str
    history: tuple[int, ...]  # catalog indices, oldest first
    target: int | None  # catalog index; None when recommending for an unseen future
    # sequence objective: the items history[sequence_from:] + (target,) are all training targets, each
    # predicted from the items before it; None = only ``target`` is (the prompt → target objective)
    sequence_from: int | None = None
    # reason-then-recommend: a rationale built from the history alone (genrec.rationale), written before the target
    rationale: str | None = None
    # explained recommendation: the explanation of the target (genrec.explanations), written after it
    explanation: str | None = None

    @property
    def sequence(self) -> tuple[int, ...]:
        return self.history + ((self.target,) if self.target is not None else ())


def k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively keep users and items with at least k interactions."""
    if k <= 1:
        return frame
    while True:
        users = frame["user_id"].map(frame["user_id"].value_counts())
        items = frame["item_id"].map(frame["item_id"].value_counts())
        keep = (users >= k) & (items >= k)
        if keep.all():
            return frame
        frame = frame[keep]


@dataclass
class Split:
    catalog: Catalog
    sequences: dict[str, list[int]]  # user -> all items, chronological
    ratings: dict[str, dict[int, float]] = field(default_factory=dict)  # user -> item -> rating (last one; may be empty)

    def train_part(self, user: str) -> list[int]:
        seq = self.sequences[user]
        return seq[:-2] if len(seq) >= 3 else seq

    @property
    def eval_users(self) -> list[str]:
        """Users that have a validation and a test item, in a stable order."""
        return [u for u, s in self.sequences.items() if len(s) >= 3]

    def example(self, user: str, split: str, max_history: int) -> Example:
        """The validation or test example of a user: history truncated to the last ``max_history`` items."""
        seq = self.sequences[user]
        if len(seq) < 3:
            raise DataError(f"user {user} has {len(seq)} interactions; evaluation needs at least 3")
        cut = len(seq) - (2 if split == "valid" else 1)
        return Example(user, tuple(seq[max(0, cut - max_history):cut]), seq[cut])

    def seen(self, user: str, split: str) -> set[int]:
        """Items the user interacted with before the target of ``split`` (the seen-item rule's input)."""
        seq = self.sequences[user]
        cut = len(seq) - (2 if split == "valid" else 1)
        return set(seq[:cut])

    def train_popularity(self) -> np.ndarray:
        """Interaction counts per catalog item over training parts only."""
        counts = np.zeros(len(self.catalog), dtype=np.int64)
        for user in self.sequences:
            np.add.at(counts, self.train_part(user), 1)
        return counts


def build_split(frame: pd.DataFrame, catalog: Catalog) -> Split:
    ordered = frame.assign(_row=np.arange(len(frame))).sort_values(["user_id", "timestamp", "_row"], kind="stable")
    index_of = {it.item_id: it.index for it in catalog.items}
    sequences: dict[str, list[int]] = {}
    ratings: dict[str, dict[int, float]] = {}
    rated = "rating" in ordered and ordered["rating"].notna().any()
    values = ordered["rating"] if rated else [None] * len(ordered)
    for user, item, rating in zip(ordered["user_id"], ordered["item_id"].map(index_of), values):
        sequences.setdefault(user, []).append(int(item))
        if rating is not None and rating == rating:  # NaN: no rating for this interaction
            ratings.setdefault(user, {})[int(item)] = float(rating)
    return Split(catalog=catalog, sequences=sequences, ratings=ratings)


def sliding_windows(split: Split, max_history: int, min_history: int = 1, per_user: int | None = None) -> list[Example]:
    """Training examples: each training item as target of the ≤ max_history items before it."""
    examples = []
    for user, _ in split.sequences.items():
        part = split.train_part(user)
        starts = range(max(min_history, 1), len(part))
        if per_user is not None:
            starts = starts[-per_user:] if per_user > 0 else range(0)
        for t in starts:
            examples.append(Example(user, tuple(part[max(0, t - max_history):t]), part[t]))
    return examples


def sequence_windows(split: Split, max_history: int, stride: int | None = None) -> list[Example]:
    """Whole-history training examples: windows of up to max_history + 1 training items, ending at the
    last training item and stepping back by ``stride`` (default max_history). Each item after a window's
    first is a target read in context of the window items before it; a window counts only the targets
    no later window counts (its last ``stride``), so every training item but a user's first is a target
    exactly once and has at least max_history - stride items of context (unless the user has fewer)."""
    stride = max_history if stride is None else stride
    if not 1 <= stride <= max_history:
        raise DataError(f"sequence stride must be between 1 and max_history ({max_history}), got {stride}")
    examples = []
    for user in split.sequences:
        part = split.train_part(user)
        end = len(part)
        while end >= 2:
            start = max(0, end - max_history - 1)
            window = part[start:end]
            first = 1 if start == 0 else len(window) - stride  # position in the window of the first counted target
            examples.append(Example(user, tuple(window[:-1]), window[-1], sequence_from=first))
            if start == 0:
                break
            end -= stride
    return examples


def training_examples(split: Split, data_cfg, objective: str) -> list[Example]:
    """The training set of a run: whole-history windows (``sequence``) or prompt → target windows."""
    if objective == "sequence":
        return sequence_windows(split, data_cfg.max_history, data_cfg.sequence_stride)
    return sliding_windows(split, data_cfg.max_history, data_cfg.min_history, data_cfg.train_windows_per_user)


def describe(split: Split) -> dict:
    lengths = [len(s) for s in split.sequences.values()]
    return {
        "users": len(split.sequences),
        "items": len(split.catalog),
        "interactions": int(sum(lengths)),
        "eval_users": len(split.eval_users),
        "median_history": float(np.median(lengths)) if lengths else 0.0,
    }
