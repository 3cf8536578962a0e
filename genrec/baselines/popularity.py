"""Non-LLM baselines, ranked under the same protocol and scored by the same metrics."""

from __future__ import annotations

import numpy as np

from genrec.data.splits import Case, Split


def most_popular(split: Split, cases: list[Case], k: int, exclude_seen: bool = True) -> list[list[int]]:
    """Per case: the most interacted-with items of the training part (ties by catalog index), skipping the
    case's seen items (its history) when asked."""
    popularity = split.train_popularity()
    order = np.lexsort((np.arange(len(popularity)), -popularity)).tolist()  # most popular first, ties by index
    rankings = []
    for case in cases:
        seen = split.case_seen(case) if exclude_seen else set()
        ranking = []
        for item in order:
            if item not in seen:
                ranking.append(item)
                if len(ranking) == k:
                    break
        rankings.append(ranking)
    return rankings


def most_popular_unseen(split: Split, users: list[str], split_name: str, k: int, exclude_seen: bool = True) -> list[list[int]]:
    """Leave-one-out: ``most_popular`` for each user's case of ``split_name``."""
    return most_popular(split, [split.user_case(u, split_name) for u in users], k, exclude_seen)
