"""Explanation text from evidence: rule-chosen families, each with a bank of paraphrases.

Families, each used only when its evidence holds (``Explainer.applicable``):

- ``genre``: the key feature is among the user's recent genres — "7 of your last 10 movies were Drama, ...";
- ``anchor``: a loved history title shares a genre with the item — "Because you loved Heat (1995), ...";
- ``cowatch``: other users who watched a loved history title also watched the item;
- ``era``: the item is from the decade the history is mostly from;
- ``different``: an honest fallback when the item is outside the user's top genre;
- ``plain``: what is true of the item alone, when nothing else holds.

The oracle explanation of a pair picks one applicable family and one paraphrase with a stable hash of
(user, item), so the supervision varies without being random between runs. ``candidates`` lists every
true statement the evidence supports — every applicable family, anchor and paraphrase — which is the set
grounded decoding chooses from. ``generic`` is the non-personalised baseline: the item's facts only.

Every sentence keeps claims about the user in clauses that say "you"/"your" and claims about the item
in clauses that do not, the convention genrec.explain.verify parses claims by.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from genrec.data.splits import Example
from genrec.errors import ConfigError
from genrec.explain.evidence import Evidence, EvidenceBuilder, stable_hash

BANKS: dict[str, tuple[str, ...]] = {
    "genre": (
        "{n} of your last {m} movies were {feature}, and this one is {feature} too.",
        "{A_feature} pick: {n} of your last {m} movies were {feature}.",
        "{feature} again: {n} of your last {m} movies were {feature}.",
    ),
    "anchor": (
        "Because you loved {anchor}, here is another {genre} movie.",
        "You rated {anchor} highly, and this is also {a_genre} film.",
        "Since you enjoyed {anchor}: here is another {genre} pick.",
    ),
    "cowatch": (
        "{count} other viewers who watched {anchor} also watched this movie.",
        "You loved {anchor}, and {count} other viewers who saw it also saw this one.",
        "Watched together: {count} other viewers saw both {anchor} and this movie.",
    ),
    "era": (
        "You mostly watch movies from the {decade}, and this one is from {year}.",
        "A {year} movie, from the {decade} you watch most.",
        "Most of your movies are from the {decade}; this one came out in {year}.",
    ),
    "different": (
        "Something different from your usual {top}: {a_genre} movie from the {decade}.",
        "A change from the {top} you usually watch: this is {a_genre} film from {year}.",
        "Outside your usual {top}: {a_genre} movie to try.",
    ),
    "plain": (
        "{A_genre} movie from {year}.",
        "This is {a_genre} film from the {decade}.",
    ),
}
FAMILIES = tuple(BANKS)


@dataclass(frozen=True)
class Explanation:
    family: str
    text: str
    feature: str | None  # the key feature (PETER's "feature" field): the item genre the user watched most
    cited: tuple[int, ...] = ()  # history items the text cites: by title, or counted by a genre claim


def with_articles(slots: dict) -> dict:
    """Adds "a_X"/"A_X" ("an Action", "A Comedy") for every genre slot X, so paraphrases read right."""
    out = dict(slots)
    for key in ("genre", "feature"):
        if slots.get(key):
            article = "an" if slots[key][0].lower() in "aeiou" else "a"
            out[f"a_{key}"], out[f"A_{key}"] = f"{article} {slots[key]}", f"{article.capitalize()} {slots[key]}"
    return out


class Explainer:
    def __init__(self, evidence: EvidenceBuilder):
        self.evidence, self.catalog, self.cowatch_min = evidence, evidence.catalog, evidence.cfg.cowatch_min

    def applicable(self, ev: Evidence) -> list[str]:
        families = []
        if ev.feature and ev.feature_count >= 2:
            families.append("genre")
        if ev.anchors:
            families.append("anchor")
        if ev.cowatch_anchor is not None and ev.cowatch >= self.cowatch_min:
            families.append("cowatch")
        if ev.item_decade and ev.item_year and ev.item_decade == ev.history_decade:
            families.append("era")
        if ev.top_genre and ev.item_genres and ev.top_genre not in ev.item_genres and ev.item_decade:
            families.append("different")
        if not families and ev.item_genres and ev.item_year:
            families.append("plain")
        return families

    def _slots(self, family: str, ev: Evidence) -> list[tuple[dict, tuple[int, ...]]]:
        """Every way to fill the family's slots from the evidence, with the history items each cites."""
        title = lambda i: self.catalog[i].text  # noqa: E731
        item_facts = {"year": ev.item_year, "decade": ev.item_decade}
        if family == "genre":
            counted = tuple(h for h in ev.history[-ev.recent:] if ev.feature in self.evidence.genres(h))
            return [({"n": ev.feature_count, "m": ev.recent, "feature": ev.feature}, counted)]
        if family == "anchor":
            return [({"anchor": title(a), "genre": ev.anchor_genre if a == ev.anchors[0] else
                      min(set(ev.item_genres) & self.evidence.genres(a))}, (a,)) for a in ev.anchors]
        if family == "cowatch":
            return [({"anchor": title(ev.cowatch_anchor), "count": ev.cowatch}, (ev.cowatch_anchor,))]
        if family == "era":
            return [({"decade": ev.item_decade, "year": ev.item_year}, ())]
        if family == "plain":
            return [({"genre": g, **item_facts}, ()) for g in ev.item_genres[:2]]
        others = [g for g in ev.item_genres if g != ev.top_genre]
        return [({"top": ev.top_genre, "genre": g, **item_facts}, ()) for g in others[:2]]

    def candidates(self, ev: Evidence, paraphrases: int | None = None) -> list[Explanation]:
        """Every true statement the evidence supports, in a fixed order, each text once. ``paraphrases``: how
        many wordings of each statement (None: the whole bank; N: N of them, the first chosen by a stable hash
        of the pair and family, so that the same statement reads differently across pairs)."""
        out: dict[str, Explanation] = {}
        for family in self.applicable(ev):
            bank = BANKS[family]
            forms = bank if paraphrases is None else [
                bank[(stable_hash(ev.user_id, str(ev.item), family) + i) % len(bank)]
                for i in range(min(paraphrases, len(bank)))]
            for slots, cited in self._slots(family, ev):
                for form in forms:
                    text = form.format(**with_articles(slots))
                    out.setdefault(text, Explanation(family, text, ev.feature, cited))
        return list(out.values())

    def oracle(self, ev: Evidence) -> Explanation | None:
        """The reference explanation of the pair: one applicable family and paraphrase, by a stable hash."""
        families = self.applicable(ev)
        if not families:
            return None
        h = stable_hash(ev.user_id, str(ev.item))
        family = families[h % len(families)]
        slots, cited = self._slots(family, ev)[0]
        form = BANKS[family][(h // len(families)) % len(BANKS[family])]
        return Explanation(family, form.format(**with_articles(slots)), ev.feature, cited)

    def generic(self, ev: Evidence) -> Explanation | None:
        """The non-personalised baseline: what is true of the item, the same for every user."""
        if not (ev.item_genres and ev.item_year):
            return None
        slots = with_articles({"genre": ev.item_genres[0], "year": ev.item_year, "decade": ev.item_decade})
        form = BANKS["plain"][stable_hash(str(ev.item)) % len(BANKS["plain"])]
        return Explanation("plain", form.format(**slots), ev.feature)


def build_examples(setup, examples: list[Example]) -> list[Example]:
    """Example builder (genrec.recommender.EXAMPLE_BUILDERS), for templates that write an explanation: each
    example with the reference explanation of its target (``setup.explainer``); pairs no explanation family
    covers are dropped (their item has neither genres nor a year)."""
    if not setup.template.has_explanation:
        return examples
    if setup.cfg.train.objective == "sequence":
        raise ConfigError(f"{setup.template.source} writes an explanation beside the item, which needs "
                          "train.objective=target (one line per prompt)")
    out = []
    for ex in examples:
        ref = setup.explainer.oracle(setup.explainer.evidence.build(ex.user_id, ex.history, ex.target))
        if ref is not None:
            out.append(replace(ex, explanation=ref.text))
    return out
