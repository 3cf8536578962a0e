"""Chronological histories, the evaluation protocols and training examples (docs/protocol.md).

Per user, interactions sorted by time (ties keep file order). Three protocols
(``data.split``) say which interactions are training and which are evaluated:

- ``leave_one_out`` (default): the last item is the test target, the second-to-last
  the validation target, the rest training. Users with fewer than 3 interactions
  contribute training windows only. One evaluation case per user, its id the user id.
- ``temporal`` (D3 / MiniOneRec): every (history -> next item) row of every user,
  sorted by the target's time, cut globally into train / valid / test shares. A user
  has as many cases as it has rows in a part, each with its own history (the items
  before its target, validation and test items included); a user's training part is
  its items up to its last training target.
- ``files``: rows split already (``data.format=minionerec``); each validation and
  test row is a case with the history the file gives it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genrec.data.catalog import Catalog
from genrec.errors import DataError

log = logging.getLogger("genrec")

PROTOCOLS = ("leave_one_out", "temporal", "files")


@dataclass(frozen=True)
class Example:
    user_id: str
    history: tuple[int, ...]  # catalog indices, oldest first
    target: int | None  # catalog index; None when recommending for an unseen future
    # sequence objective: the items history[sequence_from:] + (target,) are all training targets, each
    # predicted from the items before it; None = only ``target`` is (the prompt → target objective)
    sequence_from: int | None = None
    # reason-then-recommend: a rationale built from the history alone (genrec.causal.rationale), written before the target
    rationale: str | None = None
    # explained recommendation: the explanation of the target (genrec.explain.statements), written after it
    explanation: str | None = None
    # pointwise preference: does the user like ``target`` (the candidate shown in the prompt)? None = not pointwise
    label: bool | None = None
    # a self-supervised task (genrec.paradigms.multitask: masked_item | item_from_text) rendered by the template's
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


@dataclass(frozen=True)
class Case:
    """One evaluation case: predict ``target`` after the history of ``user_id``.

    Leave-one-out and temporal cases point into ``Split.sequences`` (``position``: the target's index in
    its user's items; the history is every item before it); a row of a pre-split file carries the history
    the file gives it (``history``). ``case_id``: leave-one-out the user id; temporal ``user:position``;
    files ``file:line``."""
    case_id: str
    user_id: str
    target: int
    position: int | None = None
    history: tuple[int, ...] | None = None
    time: float = math.nan  # the target's timestamp (NaN when the data has none)


@dataclass
class Split:
    catalog: Catalog
    sequences: dict[str, list[int]]  # user -> all items, chronological (files: the user's training rows, stitched)
    ratings: dict[str, dict[int, float]] = field(default_factory=dict)  # user -> item -> rating (last one; may be empty)
    times: dict[str, list[float]] = field(default_factory=dict)  # user -> timestamp of each item of ``sequences``
    protocol: str = "leave_one_out"  # leave_one_out | temporal | files (data.split)
    train_ends: dict[str, int] = field(default_factory=dict)  # temporal: user -> length of its training part
    eval_cases: dict[str, list[Case]] = field(default_factory=dict)  # temporal/files: "valid"/"test" -> cases
    train_rows: list[Case] | None = None  # files: the training rows (the target objective's examples)
    description: str = "leave-one-out"  # the protocol in words (eval_results.json)

    def train_part(self, user: str) -> list[int]:
        seq = self.sequences[user]
        if self.protocol == "temporal":
            return seq[: self.train_ends.get(user, 0)]
        if self.protocol == "files":
            return seq
        return seq[:-2] if len(seq) >= 3 else seq

    @property
    def eval_users(self) -> list[str]:
        """Users that have a validation and a test item (temporal/files: a test case), in a stable order."""
        if self.protocol != "leave_one_out":
            return list(dict.fromkeys(c.user_id for c in self.eval_cases.get("test", [])))
        return [u for u, s in self.sequences.items() if len(s) >= 3]

    def cases(self, split: str) -> list[Case]:
        """Every evaluation case of ``split`` (valid | test), in a stable order (temporal: by target time)."""
        if self.protocol == "leave_one_out":
            return [self.user_case(u, split) for u in self.eval_users]
        return self.eval_cases[split]

    def user_case(self, user: str, split: str) -> Case:
        """Leave-one-out: the one validation or test case of a user."""
        self._one_case_per_user("user_case")
        seq = self.sequences[user]
        if len(seq) < 3:
            raise DataError(f"user {user} has {len(seq)} interactions; evaluation needs at least 3")
        cut = len(seq) - (2 if split == "valid" else 1)
        times = self.times.get(user)
        return Case(user, user, seq[cut], position=cut, time=times[cut] if times else math.nan)

    def case_example(self, case: Case, max_history: int) -> Example:
        """A case as an example: its history truncated to the last ``max_history`` items."""
        if case.history is not None:
            return Example(case.user_id, case.history[-max_history:], case.target)
        seq = self.sequences[case.user_id]
        return Example(case.user_id, tuple(seq[max(0, case.position - max_history):case.position]), case.target)

    def case_seen(self, case: Case) -> set[int]:
        """The items before a case's target (the seen-item rule's input; files: the row's history)."""
        if case.history is not None:
            return set(case.history)
        return set(self.sequences[case.user_id][:case.position])

    def _one_case_per_user(self, what: str) -> None:
        if self.protocol != "leave_one_out":
            raise DataError(f"Split.{what} names a user's one leave-one-out case; data.split={self.protocol} gives "
                            "a user several cases: use Split.cases(split_name) and Split.case_example")

    def example(self, user: str, split: str, max_history: int) -> Example:
        """The validation or test example of a user: history truncated to the last ``max_history`` items."""
        self._one_case_per_user("example")
        seq = self.sequences[user]
        if len(seq) < 3:
            raise DataError(f"user {user} has {len(seq)} interactions; evaluation needs at least 3")
        cut = len(seq) - (2 if split == "valid" else 1)
        return Example(user, tuple(seq[max(0, cut - max_history):cut]), seq[cut])

    def seen(self, user: str, split: str) -> set[int]:
        """Items the user interacted with before the target of ``split`` (the seen-item rule's input)."""
        self._one_case_per_user("seen")
        seq = self.sequences[user]
        cut = len(seq) - (2 if split == "valid" else 1)
        return set(seq[:cut])

    def target_time(self, user: str, split: str) -> float:
        """Timestamp of the user's validation or test interaction."""
        self._one_case_per_user("target_time")
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
    """Per user (in user-id order), its items sorted by time, ties in file order; ratings keep each item's
    last one. Vectorised: one sort, then a slice per user (a 10M-row log in seconds)."""
    ordered = frame.assign(_row=np.arange(len(frame))).sort_values(["user_id", "timestamp", "_row"], kind="stable")
    users = ordered["user_id"].to_numpy(dtype=object)
    items = pd.Index([it.item_id for it in catalog.items]).get_indexer(ordered["item_id"].to_numpy(dtype=object))
    if (items < 0).any():
        missing = ordered["item_id"].to_numpy(dtype=object)[items < 0][0]
        raise DataError(f"item {missing!r} of the interactions is not in the catalog")
    item_list = items.tolist()
    time_list = ordered["timestamp"].to_numpy(dtype=np.float64).tolist()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]).tolist() if len(users) else []
    bounds = list(zip(starts, starts[1:] + [len(users)]))
    sequences = {users[a]: item_list[a:b] for a, b in bounds}
    times = {users[a]: time_list[a:b] for a, b in bounds}
    ratings: dict[str, dict[int, float]] = {}
    if "rating" in ordered and ordered["rating"].notna().any():
        values = ordered["rating"].to_numpy(dtype=np.float64).tolist()
        for a, b in bounds:
            rated = {item: r for item, r in zip(item_list[a:b], values[a:b]) if r == r}  # NaN: no rating
            if rated:
                ratings[users[a]] = rated
    return Split(catalog=catalog, sequences=sequences, ratings=ratings, times=times)


def temporal_split(split: Split, ratios: list[float], source: str = "data") -> Split:
    """D3 / MiniOneRec's protocol on a time-ordered split: every (history -> next item) row of every user
    (targets at positions 1, 2, ... of its items), sorted by the target's time (ties: user order, then
    position), cut globally at floor(share * rows) into train / valid / test. Within a user targets are in
    time order, so its training rows are a prefix of its items: ``train_ends`` keeps how many items that is
    (0 when it has no training row: then nothing of it is trained on or counted as popular)."""
    users = list(split.sequences)
    lengths = np.fromiter((len(split.sequences[u]) for u in users), dtype=np.int64, count=len(users))
    per_user = np.maximum(lengths - 1, 0)
    total = int(per_user.sum())
    owner = np.repeat(np.arange(len(users)), per_user)
    position = np.arange(total) - np.repeat(np.cumsum(per_user) - per_user, per_user) + 1
    times = np.concatenate([np.asarray(split.times[u][1:], dtype=np.float64) for u in users]) if total else np.zeros(0)
    order = np.lexsort((position, owner, times))  # by target time, then user, then position
    cut_train = math.floor(ratios[0] * total + 1e-9)
    cut_valid = math.floor((ratios[0] + ratios[1]) * total + 1e-9)
    parts = {"train": order[:cut_train], "valid": order[cut_train:cut_valid], "test": order[cut_valid:]}
    for name, rows in parts.items():
        if not rows.size:
            raise DataError(f"{source}: data.split=temporal cuts {total} rows (every user's history -> next item) by "
                            f"data.temporal_ratios={list(ratios)}, which leaves the {name} part empty; more data or "
                            "other shares are needed")
    trained = np.bincount(owner[parts["train"]], minlength=len(users))
    split.train_ends = {u: int(n) + 1 for u, n in zip(users, trained) if n}
    split.eval_cases = {
        name: [Case(f"{users[owner[r]]}:{position[r]}", users[owner[r]], split.sequences[users[owner[r]]][position[r]],
                    position=int(position[r]), time=float(times[r])) for r in parts[name].tolist()]
        for name in ("valid", "test")
    }
    split.protocol = "temporal"
    shares = "/".join(f"{r:g}" for r in ratios)
    split.description = (f"temporal {shares}: every (history -> next item) row of every user, sorted by the "
                         "target's time and cut globally; each row is a case with its own history")
    return split


def build_files_split(catalog: Catalog, rows: dict[str, list[tuple[str, str, list[int], int]]]) -> Split:
    """A split read from pre-split row files: ``rows[name]`` = (case id, user, history, target) per row of
    the train / valid / test file, in file order.

    ``sequences``: each user's training rows stitched into one item sequence. A row continues it when its
    history is the tail of the items so far (as in the published files, where the next row's history is the
    previous history plus its target, cut to the last N); rows that continue nothing of their user are
    kept as rows for the target objective but left out of the sequence (logged with their count)."""
    sequences: dict[str, list[int]] = {}
    unchained = 0
    for _, user, history, target in rows["train"]:
        seq = sequences.get(user)
        if seq is None:
            sequences[user] = list(history) + [target]
        elif len(history) <= len(seq) and seq[len(seq) - len(history):] == list(history):
            seq.append(target)
        else:
            unchained += 1
    if unchained:
        log.warning("%d of %d training rows do not continue their user's earlier rows (their history is not the "
                    "tail of the items so far): the target objective trains on them, the sequence objective and "
                    "SASRec (which read each user's stitched sequence) and the popularity counts leave them out",
                    unchained, len(rows["train"]))
    cases = {name: [Case(cid, user, target, history=tuple(history)) for cid, user, history, target in rows[name]]
             for name in ("train", "valid", "test")}
    return Split(catalog=catalog, sequences=sequences, times={u: [float(i) for i in range(len(s))]
                                                                 for u, s in sequences.items()},
                 protocol="files", eval_cases={"valid": cases["valid"], "test": cases["test"]},
                 train_rows=cases["train"],
                 description="files: the rows of the validation / test file, each a case with the history it gives")


def sliding_windows(split: Split, max_history: int, min_history: int = 1, per_user: int | None = None,
                    time_cut: float | None = None, period: str = "all") -> list[Example]:
    """Training examples: each training item as target of the ≤ max_history items before it
    (only targets in ``period`` relative to ``time_cut``; see ``Split.period_targets``). Pre-split files
    (``Split.train_rows``): one example per training row, with the row's own history."""
    if split.train_rows is not None:
        return _row_examples(split.train_rows, max_history, min_history, per_user)
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


def _row_examples(rows: list[Case], max_history: int, min_history: int, per_user: int | None) -> list[Example]:
    examples = [Example(r.user_id, r.history[-max_history:], r.target) for r in rows if len(r.history) >= min_history]
    if per_user is None:
        return examples
    kept, seen = [], {}
    for ex in reversed(examples):  # each user's most recent rows
        seen[ex.user_id] = seen.get(ex.user_id, 0) + 1
        if seen[ex.user_id] <= per_user:
            kept.append(ex)
    return kept[::-1]


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


def training_examples(split: Split, data_cfg, objective: str) -> list[Example]:
    """The training set of a run: whole-history windows (``sequence``) or prompt → target windows,
    with targets in ``data.train_period`` relative to ``data.time_cut``."""
    cut, period = data_cfg.time_cut_seconds, data_cfg.train_period
    if objective == "sequence":
        return sequence_windows(split, data_cfg.max_history, data_cfg.sequence_stride, cut, period)
    return sliding_windows(split, data_cfg.max_history, data_cfg.min_history, data_cfg.train_windows_per_user,
                           cut, period)


def describe(split: Split) -> dict:
    lengths = [len(s) for s in split.sequences.values()]
    out = {
        "users": len(split.sequences),
        "items": len(split.catalog),
        "interactions": int(sum(lengths)),
        "eval_users": len(split.eval_users),
        "median_history": float(np.median(lengths)) if lengths else 0.0,
    }
    if split.protocol != "leave_one_out":
        out["protocol"] = split.description
        if split.protocol == "files":  # sequences hold training rows only: count every user and row
            out["users"] = len({c.user_id for rows in (split.train_rows, *split.eval_cases.values()) for c in rows})
            out["train_rows"] = len(split.train_rows)
        else:
            out["train_rows"] = sum(max(n - 1, 0) for n in split.train_ends.values())
        out["valid_rows"] = len(split.eval_cases["valid"])
        out["test_rows"] = len(split.eval_cases["test"])
    return out
