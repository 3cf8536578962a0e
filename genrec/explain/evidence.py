"""Evidence for explaining a (user, item) pair: what is true of the item and of the user's history.

Everything comes from the data, never from a model: the item's genres, year and decade (catalog
fields, ``explain.genre_field`` / ``year_field``); the user's genre affinity over the last
``explain.recent`` items of the history; the key feature (the item genre the user watched most there);
anchor titles (history items rated >= ``explain.anchor_min_rating`` that share the most genres with the
item, most recent first on ties); and co-watch counts (other users who watched both an anchor and the
item, counted over the training parts of the split only, so validation and test never leak in).

``EvidenceBuilder.facts`` answers the same questions for any history and item, which is what the
explanation verifier checks claims against.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from genrec.data.splits import Split
from genrec.items.facts import ItemFacts


def stable_hash(*parts) -> int:
    """A hash of the parts that is the same in every process and run (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Evidence:
    user_id: str
    item: int  # catalog index of the explained item
    history: tuple[int, ...]  # the input history, oldest first
    item_genres: tuple[str, ...]
    item_year: int | None
    item_decade: str | None
    recent: int  # length of the window the affinity and counted claims cover (the last items of the history)
    affinity: tuple[tuple[str, int], ...]  # genre counts over that window, most watched first (ties by name)
    feature: str | None  # the item genre the user watched most in that window (None: none of them)
    feature_count: int
    anchors: tuple[int, ...]  # loved history items sharing genres with the item, best first
    anchor_genre: str | None  # the shared genre of the first anchor the user watched most
    cowatch_anchor: int | None  # the loved history item most co-watched with the item
    cowatch: int  # other users (training parts) who watched both
    history_decade: str | None  # the decade most of the history is from (ties: the latest)
    rating: float | None  # the user's rating of the item when known (records only; never used as evidence)

    @property
    def top_genre(self) -> str | None:
        return self.affinity[0][0] if self.affinity else None


class EvidenceBuilder:
    def __init__(self, split: Split, explain_cfg, max_anchors: int = 2):
        self.split, self.cfg, self.max_anchors = split, explain_cfg, max_anchors
        self.catalog = split.catalog
        self.facts = ItemFacts(split.catalog, explain_cfg.genre_field, explain_cfg.year_field)
        self._genres = [frozenset(self.facts.genres(it)) for it in self.catalog.items]
        self.watchers: list[set[str]] = [set() for _ in range(len(self.catalog))]
        for user in split.sequences:
            for item in split.train_part(user):
                self.watchers[item].add(user)

    def genres(self, item: int) -> frozenset[str]:
        return self._genres[item]

    def rating(self, user_id: str, item: int) -> float | None:
        return self.split.ratings.get(user_id, {}).get(item)

    def loved(self, user_id: str, item: int) -> bool:
        rating = self.rating(user_id, item)
        return rating is not None and rating >= self.cfg.anchor_min_rating

    def cowatch(self, a: int, b: int, user_id: str) -> int:
        """Other users whose training part holds both items."""
        return len((self.watchers[a] & self.watchers[b]) - {user_id})

    def window(self, history: tuple[int, ...]) -> tuple[int, ...]:
        return history[-self.cfg.recent:]

    def genre_count(self, history: tuple[int, ...], genre: str) -> int:
        return sum(genre in self._genres[h] for h in self.window(history))

    def history_decade(self, history: tuple[int, ...]) -> str | None:
        decades = Counter(d for h in history if (d := self.facts.decade(self.catalog[h])))
        if not decades:
            return None
        best = max(decades.values())
        return max(d for d, n in decades.items() if n == best)

    def build(self, user_id: str, history: tuple[int, ...], item: int) -> Evidence:
        it = self.catalog[item]
        item_genres = self._genres[item]
        window = self.window(history)
        counts = Counter(g for h in window for g in self._genres[h])
        affinity = tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        feature = next((g for g, _ in affinity if g in item_genres), None)
        recency = {h: pos for pos, h in enumerate(history)}  # the last occurrence wins
        loved = [h for h in recency if h != item and self.loved(user_id, h)]
        sharing = sorted((h for h in loved if self._genres[h] & item_genres),
                         key=lambda h: (-len(self._genres[h] & item_genres), -recency[h]))
        anchors = tuple(sharing[: self.max_anchors])
        anchor_genre = next((g for g, _ in affinity if anchors and g in self._genres[anchors[0]] & item_genres),
                            min(self._genres[anchors[0]] & item_genres) if anchors else None)
        co = max(loved, key=lambda h: (self.cowatch(h, item, user_id), recency[h]), default=None)
        return Evidence(
            user_id=user_id, item=item, history=tuple(history), item_genres=tuple(sorted(item_genres)),
            item_year=self.facts.year(it), item_decade=self.facts.decade(it), recent=len(window), affinity=affinity,
            feature=feature, feature_count=counts.get(feature, 0) if feature else 0, anchors=anchors,
            anchor_genre=anchor_genre, cowatch_anchor=co, cowatch=self.cowatch(co, item, user_id) if co is not None else 0,
            history_decade=self.history_decade(history), rating=self.rating(user_id, item),
        )
