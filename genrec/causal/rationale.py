"""Rationales for reason-then-recommend, built from a user's history alone.

A rationale names what the history shows — the most watched genres with their counts, the
preferred decade, and one or two recent items the user rated highly — e.g.::

    likes Drama (14) and Comedy (9); mostly 1990s; loved Fargo (1996) and Heat (1995)

It is built only from the example's history (for training windows, items of the training part),
never from the target, so at test time the model can write it from what it reads. The target is
then predicted after it. ``named_genres`` reads the genres back out of a (generated) rationale,
for the genre-match metric.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

from genrec.data.catalog import Catalog
from genrec.data.splits import Example, Split
from genrec.errors import ConfigError
from genrec.items.facts import ItemFacts


def build_examples(setup, examples: list[Example]) -> list[Example]:
    """Example builder (genrec.recommender.EXAMPLE_BUILDERS), for templates that write a rationale: each
    example with the rationale of its history."""
    if not setup.template.has_rationale:
        return examples
    if setup.cfg.train.objective == "sequence":
        raise ConfigError(f"{setup.template.source} writes a rationale beside the item, which needs "
                          "train.objective=target (one line per prompt)")
    return RationaleBuilder(setup.split, setup.cfg.reason).attach(examples)


class RationaleBuilder:
    def __init__(self, split: Split, reason_cfg):
        self.catalog: Catalog = split.catalog
        self.ratings = split.ratings
        self.cfg = reason_cfg
        self.facts = ItemFacts(self.catalog, reason_cfg.genre_field, reason_cfg.year_field)
        self.genres, self.decade = self.facts.genres, self.facts.decade

    def build(self, user_id: str, history: tuple[int, ...]) -> str:
        items = [self.catalog[i] for i in history]
        parts = []
        counts = Counter(g for it in items for g in self.genres(it))
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.cfg.top_genres]
        if top:
            parts.append("likes " + " and ".join(f"{g} ({n})" for g, n in top))
        decades = Counter(d for it in items if (d := self.decade(it)))
        if decades:
            best = max(decades.values())
            parts.append("mostly " + max(d for d, n in decades.items() if n == best))  # ties: the latest decade
        rated = self.ratings.get(user_id, {})
        anchors = []
        for it in reversed(items):  # most recent first
            if len(anchors) == self.cfg.anchors:
                break
            if rated.get(it.index, 0.0) >= self.cfg.anchor_min_rating and it.text not in anchors:
                anchors.append(it.text)
        if anchors:
            parts.append("loved " + " and ".join(anchors))
        return "; ".join(parts) if parts else "no clear taste yet"

    def attach(self, examples: list[Example]) -> list[Example]:
        return [replace(ex, rationale=self.build(ex.user_id, ex.history)) for ex in examples]

    def vocabulary(self) -> set[str]:
        return self.facts.vocabulary()


def named_genres(rationale: str, vocabulary: set[str]) -> set[str]:
    """The catalog genres a rationale names (whole words of its "likes ..." clause, so that a title such as
    "Star Wars" among the loved items does not name War; the whole text when it has no such clause)."""
    clause = re.search(r"likes ([^;]*)", rationale)
    words = set(re.findall(r"[\w'-]+", clause.group(1) if clause else rationale))
    return {g for g in vocabulary if g in words}


def rationale_metrics(lists: list[list[int]], generated: list[str], reference: list[str],
                      builder: RationaleBuilder, k: int = 10) -> dict[str, float]:
    """How the written rationales relate to the history and to the recommendations:

    - ``rationale_genre_match@k``: share of top-k items with a genre the user's rationale names;
    - ``rationale_genre_precision``: share of named genres that the reference rationale (built from the
      history) names too;
    - ``rationale_exact``: share of rationales identical to the reference."""
    vocabulary = builder.vocabulary()
    match, slots, right, named, exact = 0, 0, 0, 0, 0
    for items, text, ref in zip(lists, generated, reference):
        genres = named_genres(text, vocabulary)
        for item in items[:k]:
            slots += 1
            match += bool(genres & set(builder.genres(builder.catalog[item])))
        truth = named_genres(ref, vocabulary)
        named += len(genres)
        right += len(genres & truth)
        exact += text.strip() == ref.strip()
    n = len(generated)
    return {f"rationale_genre_match@{k}": match / slots if slots else 0.0,
            "rationale_genre_precision": right / named if named else 0.0,
            "rationale_exact": exact / n if n else 0.0}
