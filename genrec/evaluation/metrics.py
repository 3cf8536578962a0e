"""Ranking metrics shared by every system (LLM and baselines alike).

One relevant item per user (leave-one-out): HR@K = 1 if the target is in the top
K; NDCG@K = 1 / log2(rank + 1); MRR@K = 1 / rank (0 beyond K). Plus list-level
checks: valid-item rate (share of returned ids that are catalog items),
duplicate rate (share of returned entries repeating an earlier one in the same
list) and coverage@10 (distinct items over all top-10 lists / catalog size).
"""

from __future__ import annotations

import math


def rank_of(ranking: list[int], target: int) -> int | None:
    """1-based rank of target in ranking, or None."""
    try:
        return ranking.index(target) + 1
    except ValueError:
        return None


def ranking_metrics(rankings: list[list[int]], targets: list[int], catalog_size: int,
                    ks: tuple[int, ...] = (1, 5, 10, 20)) -> dict[str, float]:
    if len(rankings) != len(targets):
        raise ValueError("one ranking per target")
    n = len(rankings)
    out: dict[str, float] = {}
    ranks = [rank_of(r, t) for r, t in zip(rankings, targets)]
    for k in ks:
        hits = [r for r in ranks if r is not None and r <= k]
        out[f"hit@{k}"] = len(hits) / n if n else 0.0
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in hits) / n if n else 0.0
        out[f"mrr@{k}"] = sum(1.0 / r for r in hits) / n if n else 0.0
    returned = sum(len(r) for r in rankings)
    valid = sum(1 for r in rankings for i in r if isinstance(i, int) and 0 <= i < catalog_size)
    duplicates = sum(len(r) - len(set(r)) for r in rankings)
    out["valid_item_rate"] = valid / returned if returned else 1.0
    out["duplicate_rate"] = duplicates / returned if returned else 0.0
    top10 = {i for r in rankings for i in r[:10] if isinstance(i, int) and 0 <= i < catalog_size}
    out["coverage@10"] = len(top10) / catalog_size if catalog_size else 0.0
    out["users"] = n
    return out
