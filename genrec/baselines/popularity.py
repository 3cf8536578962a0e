"""Non-LLM baselines, ranked under the same protocol and scored by the same metrics."""

from __future__ import annotations

import numpy as np

from genrec.config import Config
from genrec.data.splits import Case, Split
from genrec.evaluation.protocol import as_cases, score_cases


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

def baseline_metrics(cfg: Config, split: Split, users: list, split_name: str) -> dict:
    """The configured baselines on the same cases (or leave-one-out user ids), by the same metric code."""
    cases = as_cases(split, users, split_name)
    out = {}
    k = max(cfg.eval.ks)
    for name in cfg.eval.baselines:
        if name == "popularity":
            lists = most_popular(split, cases, k, cfg.decode.exclude_seen)
            out["popularity"] = score_cases({c.case_id: [(i,) for i in r] for c, r in zip(cases, lists)}, split, cases,
                                            cfg.eval.ks, ips_clip=cfg.eval.ips_clip, seed=cfg.run.seed)
    return out
