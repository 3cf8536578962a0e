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
    # pointwise preference: does the user like ``target`` (the candidate shown in the prompt)? None = not pointwise
    label: bool | None = None
    # a self-supervised task (genrec.multitask: masked_item | item_from_text) rendered by the template's
    # ``tasks`` prompt of that name; None = next item
    task: str | None = None
    masked: int | None = None  # masked_item: the position in ``history`` of the hidden item (= target)

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
    times: dict[str, list[float]] = field(default_factory=dict)  # user -> timestamp of each item of ``sequences``

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

    def target_time(self, user: str, split: str) -> float:
        """Timestamp of the user's validation or test interaction."""
        return self.times[user][len(self.sequences[user]) - (2 if split == "valid" else 1)]

    def period_targets(self, user: str, time_cut: float | None, period: str) -> tuple[int, int]:
        """[lo, hi): positions of the user's training part that may be training targets in ``period``:
        ``all``; ``before`` the cut (what a stale model saw); ``after`` it (the newer interactions an
        incremental update trains on, read in context of the older ones)."""
        n = len(self.train_part(user))
        if period == "all" or time_cut is None:
            return 0, n
        first_new = int(np.searchsorted(np.asarray(self.times[user][:n]), time_cut, side="left"))
        return (0, first_new) if period == "before" else (first_new, n)

    def train_popularity(self) -> np.ndarray:
        """Interaction counts per catalog item over training parts only."""
        counts = np.zeros(len(self.catalog), dtype=np.int64)
        for user in self.sequences:
            np.add.at(counts, self.train_part(user), 1)
        return counts


def sequential_numbers(split: Split) -> list[int]:
    """OpenP5's sequential indexing: each item's number (catalog order) by first appearance when the users'
    training parts are read one after another; items never trained on come last. Numbers start at a power
    of ten so that all have the same digit count."""
    order: dict[int, int] = {}
    for user in split.sequences:
        for item in split.train_part(user):
            order.setdefault(item, len(order))
    for item in range(len(split.catalog)):
        order.setdefault(item, len(order))
    start = 10 ** len(str(len(split.catalog)))
    return [start + order[item] for item in range(len(split.catalog))]


def build_split(frame: pd.DataFrame, catalog: Catalog) -> Split:
    ordered = frame.assign(_row=np.arange(len(frame))).sort_values(["user_id", "timestamp", "_row"], kind="stable")
    index_of = {it.item_id: it.index for it in catalog.items}
    sequences: dict[str, list[int]] = {}
    ratings: dict[str, dict[int, float]] = {}
    times: dict[str, list[float]] = {}
    rated = "rating" in ordered and ordered["rating"].notna().any()
    values = ordered["rating"] if rated else [None] * len(ordered)
    for user, item, rating, when in zip(ordered["user_id"], ordered["item_id"].map(index_of), values,
                                        ordered["timestamp"]):
        sequences.setdefault(user, []).append(int(item))
        times.setdefault(user, []).append(float(when))
        if rating is not None and rating == rating:  # NaN: no rating for this interaction
            ratings.setdefault(user, {})[int(item)] = float(rating)
    return Split(catalog=catalog, sequences=sequences, ratings=ratings, times=times)


def sliding_windows(split: Split, max_history: int, min_history: int = 1, per_user: int | None = None,
                    time_cut: float | None = None, period: str = "all") -> list[Example]:
    """Training examples: each training item as target of the ≤ max_history items before it
    (only targets in ``period`` relative to ``time_cut``; see ``Split.period_targets``)."""
    examples = []
    for user, _ in split.sequences.items():
        part = split.train_part(user)
        lo, hi = split.period_targets(user, time_cut, period)
        starts = range(max(min_history, 1, lo), hi)
        if per_user is not None:
            starts = starts[-per_user:] if per_user > 0 else range(0)
        for t in starts:
            examples.append(Example(user, tuple(part[max(0, t - max_history):t]), part[t]))
    return examples


def sequence_windows(split: Split, max_history: int, stride: int | None = None, time_cut: float | None = None,
                     period: str = "all") -> list[Example]:
    """Whole-history training examples: windows of up to max_history + 1 training items, ending at the
    last training item and stepping back by ``stride`` (default max_history). Each item after a window's
    first is a target read in context of the window items before it; a window counts only the targets
    no later window counts (its last ``stride``), so every training item but a user's first is a target
    exactly once and has at least max_history - stride items of context (unless the user has fewer).
    With a ``period`` only targets in it count (``Split.period_targets``); older items stay as context."""
    stride = max_history if stride is None else stride
    if not 1 <= stride <= max_history:
        raise DataError(f"sequence stride must be between 1 and max_history ({max_history}), got {stride}")
    examples = []
    for user in split.sequences:
        lo, hi = split.period_targets(user, time_cut, period)
        part = split.train_part(user)[:hi]
        end = len(part)
        while end >= 2 and end > lo:
            start = max(0, end - max_history - 1)
            window = part[start:end]
            first = 1 if start == 0 else len(window) - stride  # position in the window of the first counted target
            first = max(first, lo - start)
            if first < len(window):
                examples.append(Example(user, tuple(window[:-1]), window[-1], sequence_from=first))
            if start == 0:
                break
            end -= stride
    return examples


def parse_time(value: str | None) -> float | None:
    """data.time_cut: unix seconds, or a date/time pandas reads (e.g. 1998-01-01, read as UTC)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"config: data.time_cut={value!r} is neither unix seconds nor a date like 1998-01-01") from None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.timestamp()


def training_examples(split: Split, data_cfg, objective: str) -> list[Example]:
    """The training set of a run: whole-history windows (``sequence``) or prompt → target windows,
    with targets in ``data.train_period`` relative to ``data.time_cut``."""
    cut, period = parse_time(data_cfg.time_cut), data_cfg.train_period
    if objective == "sequence":
        return sequence_windows(split, data_cfg.max_history, data_cfg.sequence_stride, cut, period)
    return sliding_windows(split, data_cfg.max_history, data_cfg.min_history, data_cfg.train_windows_per_user,
                           cut, period)


def describe(split: Split) -> dict:
    lengths = [len(s) for s in split.sequences.values()]
    return {
        "users": len(split.sequences),
        "items": len(split.catalog),
        "interactions": int(sum(lengths)),
        "eval_users": len(split.eval_users),
        "median_history": float(np.median(lengths)) if lengths else 0.0,
    }
