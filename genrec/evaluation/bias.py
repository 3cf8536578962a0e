"""Popularity-bias metrics, computed for every system next to the standard ones.

Leave-one-out test targets are exposure-biased: a popular item is a target more often because it
was shown more often, so plain HR/NDCG reward popularity. These estimates re-weight or re-sample
the test users by the inverse propensity of their target, with propensities from training
popularity only (``genrec.causal.popularity``):

- propensity of item i: ``rho_i = (pop_i + 1) / (max_j pop_j + 1)``, floored at ``1 / clip``, so a
  weight ``w_i = 1 / rho_i`` lies in [1, clip];
- ``snips_<m>@10``: self-normalised IPS, ``sum_u w_u m_u / sum_u w_u`` — the headline debiased
  estimate (scale-free, low variance);
- ``snips_ess``: the effective sample size of those weights, ``(sum_u w_u)^2 / sum_u w_u^2``: how many
  equally weighted users the debiased estimate is worth (it sets the estimate's noise);
- ``ips_<m>@10``: ``mean_u(w_u m_u) / E_train[w]``, the normaliser taken from the training
  interactions (which share the test targets' exposure bias) instead of the test sample;
- ``intervened_<m>@10``: the metric on an intervened test set of the same size, users resampled
  with replacement with probability proportional to ``w`` (seeded);
- ``hit@10_pop_q1`` .. ``q5``: HR@10 of the users whose target is in each fifth of target
  popularity (q1 = least popular targets; equal numbers of users);
- ``arp@10``: average recommendation popularity, the mean training count of the top-10 items;
- ``tail_share@10``: share of top-10 slots given to tail items, the tail being every item outside
  the most popular 20% of the catalog (by training count, ties broken by item index).
"""

from __future__ import annotations

import math

import numpy as np

QUINTILES = 5


def propensity_weights(popularity: np.ndarray, clip: float) -> np.ndarray:
    pop = np.asarray(popularity, dtype=np.float64) + 1.0
    rho = np.maximum(pop / pop.max(), 1.0 / clip)
    return 1.0 / rho


def target_ranks(rankings: list[list[int]], targets: list[int], k: int) -> dict[str, list[int]]:
    """The users (by position) whose target is in their top k, and its rank there (1 = first): all that
    per-user HR@k and NDCG@k need, and compact enough to keep (on Beauty about 9% of users)."""
    users, ranks = [], []
    for u, (ranking, target) in enumerate(zip(rankings, targets)):
        top = ranking[:k]
        if target in top:
            users.append(u)
            ranks.append(top.index(target) + 1)
    return {"users": users, "ranks": ranks}


def ndcg_from_ranks(hits: dict[str, list[int]], n_users: int) -> np.ndarray:
    """Each user's NDCG@k from ``target_ranks``: 1 / log2(rank + 1) for a hit, 0 for every other user."""
    ndcg = np.zeros(n_users)
    ndcg[np.asarray(hits["users"], dtype=np.int64)] = [1.0 / math.log2(r + 1) for r in hits["ranks"]]
    return ndcg


def _per_user(rankings: list[list[int]], targets: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    hits = target_ranks(rankings, targets, k)
    hit = np.zeros(len(targets))
    hit[np.asarray(hits["users"], dtype=np.int64)] = 1.0
    return hit, ndcg_from_ranks(hits, len(targets))


def head_items(popularity: np.ndarray, share: float = 0.2) -> np.ndarray:
    """Boolean mask of the most popular ``share`` of the catalog (ties broken by item index)."""
    pop = np.asarray(popularity)
    order = np.lexsort((np.arange(len(pop)), -pop))
    head = np.zeros(len(pop), dtype=bool)
    head[order[: int(round(share * len(pop)))]] = True
    return head


def bias_metrics(rankings: list[list[int]], targets: list[int], popularity: np.ndarray, k: int = 10,
                 clip: float = 100.0, seed: int = 0) -> dict[str, float]:
    if not targets:
        return {}
    pop = np.asarray(popularity, dtype=np.float64)
    weights = propensity_weights(pop, clip)
    w = weights[np.asarray(targets)]
    hit, ndcg = _per_user(rankings, targets, k)
    train_mean_weight = (weights * pop).sum() / pop.sum() if pop.sum() else 1.0
    resampled = np.random.default_rng(seed).choice(len(targets), size=len(targets), replace=True, p=w / w.sum())
    out = {"snips_ess": float(w.sum() ** 2 / (w ** 2).sum())}
    for name, values in (("ndcg", ndcg), ("hit", hit)):
        out[f"snips_{name}@{k}"] = float((w * values).sum() / w.sum())
        out[f"ips_{name}@{k}"] = float((w * values).mean() / train_mean_weight)
        out[f"intervened_{name}@{k}"] = float(values[resampled].mean())
    # quintiles of users by their target's popularity; ties keep the users' order (stable sort)
    by_popularity = np.argsort(pop[np.asarray(targets)], kind="stable")
    for q, members in enumerate(np.array_split(by_popularity, QUINTILES), start=1):
        out[f"hit@{k}_pop_q{q}"] = float(hit[members].mean()) if len(members) else 0.0
    tops = [r[:k] for r in rankings]
    slots = sum(len(t) for t in tops)
    out[f"arp@{k}"] = float(np.mean([pop[t].mean() for t in tops if t])) if slots else 0.0
    head = head_items(pop)
    out[f"tail_share@{k}"] = float(sum(int(not head[i]) for t in tops for i in t) / slots) if slots else 0.0
    return out


def per_user_ndcg(rankings: list[list[int]], targets: list[int], k: int = 10) -> np.ndarray:
    """Each user's NDCG@k (one target per user): 1 / log2(rank + 1) when the target is in the top k, else 0."""
    return _per_user(rankings, targets, k)[1]


def paired_relative_ci(runs: list[list[list[int]]], reference: list[list[list[int]]], targets: list[int],
                       popularity: np.ndarray, k: int = 10, clip: float = 100.0, resamples: int = 2000,
                       seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap interval of the relative change of NDCG@k and SNIPS NDCG@k of a system over a
    reference, both given as one or more runs (e.g. seeds) of rankings of the same users: each user's NDCG
    is averaged over the runs, then users are resampled with replacement, both systems together.

    Why: SNIPS puts most of its weight on the few users with rare targets (on ml-100k ~100 of 943 users
    carry half of it), so a difference between two systems needs its own uncertainty next to it."""
    return paired_relative_ci_per_user([per_user_ndcg(r, targets, k) for r in runs],
                                       [per_user_ndcg(r, targets, k) for r in reference], targets, popularity,
                                       k, clip, resamples, seed, level)


def paired_relative_ci_per_user(runs: list[np.ndarray], reference: list[np.ndarray], targets: list[int],
                                popularity: np.ndarray, k: int = 10, clip: float = 100.0, resamples: int = 2000,
                                seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """``paired_relative_ci`` from each run's per-user NDCG@k (``per_user_ndcg``) instead of its rankings: what
    a run kept as a compact record (e.g. a seed scored on another machine) can still be pooled with."""
    if any(len(r) != len(targets) for r in [*runs, *reference]):
        raise ValueError(f"per-user NDCG arrays must have one value per target ({len(targets)} users); got "
                         f"{sorted({len(r) for r in [*runs, *reference]})}")
    w = propensity_weights(popularity, clip)[np.asarray(targets)]
    ndcg, ref = np.mean(runs, axis=0), np.mean(reference, axis=0)
    draws = np.random.default_rng(seed).integers(0, len(targets), size=(resamples, len(targets)))
    wd = w[draws]
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample where the reference scores 0
        standard = ndcg[draws].mean(1) / ref[draws].mean(1) - 1
        snips = (wd * ndcg[draws]).sum(1) / (wd * ref[draws]).sum(1) - 1
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {f"ndcg@{k}": [round(float(v), 4) for v in np.nanpercentile(standard, tails)],
            f"snips_ndcg@{k}": [round(float(v), 4) for v in np.nanpercentile(snips, tails)]}
