"""Faithfulness of explanations, checked against the data with no model.

Every claim an explanation makes is parsed out of its text and checked:

- titles: any "Title (Year)" span. The recommended item's own title is an item claim; any other
  catalog title must be in the input history (a history claim); a title in neither, or a "(Year)" span
  that names no catalog item, is hallucinated. A title in a clause saying the user loved / enjoyed /
  liked / rated it highly must also carry a rating >= explain.anchor_min_rating;
- counts: "N of your last M movies were G" must match the genre's count in the last M history items
  (M no longer than the history);
- co-watch: "N other viewers ... <title> ..." must equal the number of other users whose training part
  holds both that title and the item;
- genres, decades ("1990s") and years ("1995") anywhere else: in a clause that speaks of the user
  ("you", "your") they are history claims — the genre is in the history, the decade is the one the
  history is mostly from, the year is some history item's — otherwise item claims about the recommended item.

Clauses are split at , ; : . ! ? after masking titles (titles may hold commas). The result gives item- and
history-grounding precision (true claims / claims of that kind), the hallucinated-title rate and the
history items each explanation cites (for the counterfactual necessity test).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from genrec.explain.evidence import EvidenceBuilder

YOU = re.compile(r"\b(?:you|your|you've|you're|yours)\b", re.IGNORECASE)
LOVE = re.compile(r"\b(?:loved|enjoyed|liked|rated\b.{0,30}\bhighly)\b", re.IGNORECASE)
TITLE_END = re.compile(r"\((\d{4})\)(?: \[\d+\])?")
MARK = "\u27e8T{}\u27e9"  # ⟨T0⟩: a masked title
MARK_RE = re.compile("\u27e8T(\\d+)\u27e9")
COUNT = re.compile(r"(\d+) of your last (\d+) (?:movies|films) (?:were|are) ([\w'-]+)", re.IGNORECASE)
COWATCH = re.compile(r"(\d+) other (?:viewers|people|users)\b", re.IGNORECASE)
DECADE = re.compile(r"\b(1[89]\d0|20\d0)s\b")
YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b(?!s)")


@dataclass
class Claim:
    kind: str  # title | loved | count | cowatch | genre | decade | year
    about: str  # item | history
    value: str
    true: bool


@dataclass
class Verdict:
    claims: list[Claim] = field(default_factory=list)
    titles: int = 0  # title mentions
    hallucinated: int = 0  # of which in neither the history nor the item
    cited: set[int] = field(default_factory=set)  # history items the text cites (titles, counted genres)


class ExplanationVerifier:
    def __init__(self, evidence: EvidenceBuilder):
        self.evidence = evidence
        self.catalog = evidence.catalog
        self.vocabulary = evidence.facts.vocabulary()
        self._genre_re = re.compile(r"(?<![\w'-])(" + "|".join(re.escape(g) for g in sorted(self.vocabulary, key=len, reverse=True))
                                    + r")(?![\w'-])") if self.vocabulary else None
        self._by_suffix: dict[str, list[int]] = defaultdict(list)  # "(1995)" -> items whose text ends so
        for it in self.catalog.items:
            m = TITLE_END.search(it.text)
            if m and m.end() == len(it.text):
                self._by_suffix[m.group(0)].append(it.index)
        for items in self._by_suffix.values():
            items.sort(key=lambda i: -len(self.catalog[i].text))  # longest title first

    def _mask_titles(self, text: str) -> tuple[str, list[int | None]]:
        """Replace each "Title (Year)" span with a marker; the catalog item it names, or None."""
        found: list[int | None] = []
        out, last = [], 0
        for m in TITLE_END.finditer(text):
            match = next((i for i in self._by_suffix.get(m.group(0), ())
                          if text[: m.end()].endswith(self.catalog[i].text)), None)
            start = m.end() - len(self.catalog[match].text) if match is not None else m.start()
            if start < last:
                continue
            out += [text[last:start], MARK.format(len(found))]
            found.append(match)
            last = m.end()
        out.append(text[last:])
        return "".join(out), found

    def verify(self, text: str, user_id: str, history: tuple[int, ...], item: int) -> Verdict:
        ev, verdict = self.evidence, Verdict()
        masked, titles = self._mask_titles(text)
        in_history = set(history)
        for t in titles:
            verdict.titles += 1
            if t == item:
                verdict.claims.append(Claim("title", "item", self.catalog[t].text, True))
            else:
                ok = t is not None and t in in_history
                verdict.claims.append(Claim("title", "history", self.catalog[t].text if t is not None else "?", ok))
                verdict.hallucinated += not ok
                if ok:
                    verdict.cited.add(t)
        history_genres = {g for h in history for g in ev.genres(h)}
        for sentence in re.split(r"(?<=[.!?])\s+", masked):
            sentence_titles = [titles[int(i)] for i in MARK_RE.findall(sentence)]
            for m in COWATCH.finditer(sentence):
                partner = next((t for t in sentence_titles if t is not None and t != item), None)
                ok = partner is not None and ev.cowatch(partner, item, user_id) == int(m.group(1))
                verdict.claims.append(Claim("cowatch", "item", m.group(0), ok))
            sentence = COWATCH.sub(" ", sentence)
            for clause in re.split(r"[,;:.!?]", sentence):
                self._clause(clause, titles, user_id, history, item, history_genres, verdict)
        return verdict

    def _clause(self, clause: str, titles, user_id, history, item, history_genres, verdict: Verdict) -> None:
        ev = self.evidence
        marks = [titles[int(i)] for i in MARK_RE.findall(clause)]
        if LOVE.search(clause):
            for t in marks:
                if t is not None and t != item:
                    verdict.claims.append(Claim("loved", "history", self.catalog[t].text, ev.loved(user_id, t)))
        for m in COUNT.finditer(clause):
            n, window, genre = int(m.group(1)), int(m.group(2)), m.group(3)
            last = history[-window:] if 0 < window <= len(history) else ()
            ok = bool(last) and genre in self.vocabulary and sum(genre in ev.genres(h) for h in last) == n
            verdict.claims.append(Claim("count", "history", m.group(0), ok))
            if ok:
                verdict.cited.update(h for h in last if genre in ev.genres(h))
        rest = MARK_RE.sub(" ", COUNT.sub(" ", clause))
        about = "history" if YOU.search(rest) else "item"
        item_genres = ev.genres(item)
        for g in (self._genre_re.findall(rest) if self._genre_re else []):
            ok = g in history_genres if about == "history" else g in item_genres
            verdict.claims.append(Claim("genre", about, g, ok))
        for d in DECADE.findall(rest):
            decade = f"{d}s"
            ok = decade == ev.history_decade(history) if about == "history" else \
                decade == ev.facts.decade(self.catalog[item])
            verdict.claims.append(Claim("decade", about, decade, ok))
        for y in YEAR.findall(DECADE.sub(" ", rest)):
            year = int(y)
            ok = any(ev.facts.year(self.catalog[h]) == year for h in history) if about == "history" else \
                ev.facts.year(self.catalog[item]) == year
            verdict.claims.append(Claim("year", about, y, ok))


def grounding_metrics(verdicts: list[Verdict]) -> dict[str, float]:
    """Item- and history-grounding precision, hallucinated-title rate (share of title mentions in neither the
    history nor the item) and claims per explanation. Precision is 1.0 when there are no claims of a kind."""
    counts = {"item": [0, 0], "history": [0, 0]}
    for v in verdicts:
        for c in v.claims:
            counts[c.about][0] += c.true
            counts[c.about][1] += 1
    titles = sum(v.titles for v in verdicts)
    n = len(verdicts)
    return {
        "item_grounding_precision": counts["item"][0] / counts["item"][1] if counts["item"][1] else 1.0,
        "history_grounding_precision": counts["history"][0] / counts["history"][1] if counts["history"][1] else 1.0,
        "hallucinated_title_rate": sum(v.hallucinated for v in verdicts) / titles if titles else 0.0,
        "item_claims": counts["item"][1] / n if n else 0.0,
        "history_claims": counts["history"][1] / n if n else 0.0,
    }
