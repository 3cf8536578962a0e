"""Counterfactual necessity of an explanation's evidence, measured on the recommending model.

For an explained (user, item): remove the history items the explanation cites (its titles, and the items
its counted genre claims count) and re-score the item by teacher forcing; remove as many random other
history items and re-score again. The evidence was necessary when removing it lowers the item's
log-probability more than the random removal does. Explanations that cite nothing, or histories with too
few other items to draw from, are left out (and counted).
"""

from __future__ import annotations

import random

from genrec.data.splits import Example
from genrec.decoding.search import score_items
from genrec.explain.evidence import stable_hash


def item_logprob(recommender, user_id: str, history: tuple[int, ...], item: int) -> float:
    setup = recommender.setup
    prompt = setup.encoder.prompt_ids(Example(user_id, history, None))
    # the recommender's next_logp: its fp32 output layer is made once, not once per scored (history, item)
    return float(score_items(recommender.model, prompt, setup.index, [item], next_logp=recommender.next_logp)[0])


def necessity(recommender, cases: list[tuple[Example, int, set[int]]], seed: int,
              cache: dict | None = None) -> dict[str, float]:
    """``cases``: (example, explained item, cited history items). Returns the share of testable cases where
    removing the cited items hurts the item more than removing random ones, the mean drops, and counts.
    ``cache`` (a dict) keeps scores across calls: rows explaining the same items share their forwards."""
    cache = {} if cache is None else cache

    def logprob(user_id: str, history: tuple[int, ...], item: int) -> float:
        key = (user_id, history, item)
        if key not in cache:
            cache[key] = item_logprob(recommender, user_id, history, item)
        return cache[key]

    wins, tested, drop_cited, drop_random = 0, 0, 0.0, 0.0
    for ex, item, cited in cases:
        cited = cited & set(ex.history)
        others = [h for h in dict.fromkeys(ex.history) if h not in cited]
        if not cited or len(others) < len(cited):
            continue
        rng = random.Random(stable_hash(seed, ex.user_id, item))
        dropped = set(rng.sample(others, len(cited)))
        base = logprob(ex.user_id, ex.history, item)
        without_cited = logprob(ex.user_id, tuple(h for h in ex.history if h not in cited), item)
        without_random = logprob(ex.user_id, tuple(h for h in ex.history if h not in dropped), item)
        tested += 1
        wins += (base - without_cited) > (base - without_random)
        drop_cited += base - without_cited
        drop_random += base - without_random
    return {
        "necessity_vs_random": wins / tested if tested else 0.0,
        "necessity_cases": tested,
        "necessity_untestable": len(cases) - tested,
        "mean_drop_cited": drop_cited / tested if tested else 0.0,
        "mean_drop_random": drop_random / tested if tested else 0.0,
    }
