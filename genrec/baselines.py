"""Non-LLM baselines, ranked under the same protocol and scored by the same metrics."""

from __future__ import annotations

import numpy as np

from genrec.data.splits import Split



def most_popular_unseen(split: Split, users: list[str], split_name: str, k: int, exclude_seen: bool = True) -> list[list[int]]:
    """Most interacted-with items of the training part, skipping each user's seen items when asked."""
    popularity = split.train_popularity()
    order = np.lexsort((np.arange(len(popularity)), -popularity)).tolist()  # most popular first, ties by index
    rankings = []
    for user in users:
        seen = split.seen(user, split_name) if exclude_seen else set()
        ranking = []
        for item in order:
            if item not in seen:
                ranking.append(item)
                if len(ranking) == k:
                    break
        rankings.append(ranking)
    return rankings
