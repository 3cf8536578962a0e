"""The item catalog: every recommendable item, its text fields and identifiers.

Each item has a dense index (0..n-1, used everywhere inside genrec), its original
id, its fields and three identifier strings: ``text`` (e.g. "Toy Story (1995)"),
``plain_id`` (e.g. "item_1"), the atomic token ``<item_1>`` (one new tokenizer token per item) and,
once assigned, the semantic id ``<a_3><b_17><c_0><d_0>`` (genrec.items.semantic_ids). Duplicate texts are disambiguated with a " [2]",
" [3]" suffix so that each generated string names exactly one item.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import string
from dataclasses import dataclass, field, replace

import pandas as pd

from genrec.errors import DataError

log = logging.getLogger("genrec")


@dataclass(frozen=True)
class Item:
    index: int
    item_id: str
    text: str
    plain_id: str
    fields: dict = field(default_factory=dict, hash=False, compare=False)
    semantic: str = field(default="", compare=False)  # its semantic-id code tokens, once assigned

    def identifier(self, kind: str) -> str:
        if kind == "title":
            return self.text
        if kind == "semantic":
            if not self.semantic:
                raise DataError(f"item {self.item_id} has no semantic id yet (genrec.items.semantic_ids assigns them)")
            return self.semantic
        return atomic_token(self.plain_id) if kind == "atomic" else self.plain_id


def atomic_token(plain_id: str) -> str:
    """The single added token that names an item under items.identifier=atomic."""
    return f"<{plain_id}>"


IDENTIFIER_KINDS = ("title", "id", "atomic", "semantic")


def _natural_key(item_id: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item_id)]


def _format_fields(fmt: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(fmt) if name]


class Catalog:
    def __init__(self, items: list[Item]):
        self.items = items
        self.by_id = {it.item_id: it for it in items}
        kinds = IDENTIFIER_KINDS if all(it.semantic for it in items) else IDENTIFIER_KINDS[:-1]
        self._by_identifier = {kind: {it.identifier(kind): it for it in items} for kind in kinds}
        self._words = None  # word -> titles holding it, and word weights (close_matches builds it once)

    def with_semantic(self, strings: list[str]) -> "Catalog":
        """The same items, each with its semantic-id string (catalog order); strings must be distinct."""
        if len(strings) != len(self.items) or len(set(strings)) != len(strings):
            raise DataError(f"semantic ids: expected {len(self.items)} distinct strings, got "
                            f"{len(set(strings))} distinct of {len(strings)}")
        return Catalog([replace(it, semantic=s) for it, s in zip(self.items, strings)])

    def renumber(self, numbers: list[int], id_format: str) -> "Catalog":
        """The same items with plain ids formatted from ``numbers`` (catalog order) instead of their item ids."""
        if len(numbers) != len(self.items) or len(set(numbers)) != len(numbers):
            raise DataError(f"renumbering needs {len(self.items)} distinct numbers")
        return Catalog([replace(it, plain_id=id_format.format(item_id=n)) for it, n in zip(self.items, numbers)])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    @classmethod
    def build(cls, item_ids, item_frame: pd.DataFrame | None, text_format: str, id_format: str, source: str = "items",
              missing_text: str = "placeholder") -> "Catalog":
        """Catalog over ``item_ids`` (those seen in interactions), text from ``item_frame`` if given.

        An item lacks text when ``text_format`` uses fields other than ``item_id`` and the item is not in
        ``item_frame`` (or there is none), or every such field of its row is empty. ``missing_text``:
        "placeholder" names it by its plain id (``id_format``), logging a warning with the count when the
        format asked for fields; "error" raises a DataError naming how many lack text and the first ids
        (the config path, data.missing_item_text, defaults to it).
        """
        distinct = item_ids.unique() if isinstance(item_ids, pd.Series) else item_ids  # a 10M-row column: once each
        ids = sorted({str(i) for i in distinct}, key=lambda i: (_natural_key(i), i))  # total order: "1" vs "01"
        needed = _format_fields(text_format)
        text_fields = [f for f in needed if f != "item_id"]
        if item_frame is not None:
            missing = [f for f in text_fields if f not in item_frame.columns]
            if missing:
                raise DataError(
                    f"{source}: data.item_text '{text_format}' uses field(s) {missing} that the item file lacks; "
                    f"fields found: {', '.join(map(str, item_frame.columns))}"
                )
            records = item_frame.to_dict("index")
        else:
            records = {}
        lacking = [i for i in ids if text_fields and (i not in records or all(
            pd.isna(records[i].get(f)) or str(records[i].get(f)).strip() == "" for f in text_fields))]
        if lacking:
            where = "there is no item file" if item_frame is None else "they are missing from the item file or " \
                                                                       "have every field of it empty"
            what = (f"{len(lacking)} of {len(ids)} items have no text for data.item_text '{text_format}' ({where}); "
                    f"first ids: {', '.join(lacking[:5])}")
            if missing_text == "error":
                raise DataError(
                    f"{source}: {what}. Their text would be a placeholder like '{id_format.format(item_id=lacking[0])}', "
                    "which the model would read and write as if it were a title. Add them to the item file "
                    "(data.items, or <dataset>.item), set data.item_text to fields every item has, or set "
                    "data.missing_item_text=placeholder to name them by their plain ids (items.id_format)")
            log.warning("%s: %s; they are named by their plain ids (data.missing_item_text=placeholder)", source, what)
        lacking_set = set(lacking)
        items, seen_text, taken = [], {}, set()
        for index, item_id in enumerate(ids):
            fields = {k: ("" if pd.isna(v) else v) for k, v in records.get(item_id, {}).items()}
            fields["item_id"] = item_id
            if item_id in lacking_set:
                text = id_format.format(item_id=item_id)
            elif item_frame is not None and item_id in records or not text_fields:
                try:
                    text = text_format.format(**fields).strip()
                except (KeyError, ValueError, IndexError) as e:
                    raise DataError(f"{source}: item {item_id}: cannot format data.item_text '{text_format}': {e}") from None
            else:
                text = id_format.format(item_id=item_id)
            text = " ".join(text.split())  # one line, single spaces: identifiers must round-trip through a tokenizer
            if text in taken:
                n = seen_text.get(text, 2)
                while f"{text} [{n}]" in taken:
                    n += 1
                seen_text[text] = n + 1
                text = f"{text} [{n}]"
            taken.add(text)
            items.append(Item(index=index, item_id=item_id, text=text, plain_id=id_format.format(item_id=item_id), fields=fields))
        plain = [it.plain_id for it in items]
        if len(set(plain)) != len(plain):
            raise DataError(f"items.id_format '{id_format}' maps two items to the same id; include {{item_id}}")
        return cls(items)

    def find(self, query: str, kind: str | None = None) -> Item:
        """An item by identifier (title or plain id) or original id; a close-match error otherwise."""
        item = self._lookup(query, kind)
        if item is None:
            raise DataError(f"unknown item {' '.join(str(query).split())!r} (not a title, plain id or item id in the "
                            f"catalog){self._close_hint(query)}")
        return item

    def find_all(self, queries: list[str], what: str = "items") -> list[Item]:
        """Items for every query, or one DataError listing every unknown one with its close matches."""
        found = [self._lookup(q) for q in queries]
        unknown = [q for q, it in zip(queries, found) if it is None]
        if len(unknown) == 1:
            self.find(unknown[0])  # the single-item message
        if unknown:
            lines = "; ".join(f"{' '.join(str(q).split())!r}{self._close_hint(q) or ' (nothing close)'}"
                              for q in unknown)
            raise DataError(f"{what}: {len(unknown)} of {len(queries)} items are unknown (not a title, plain id or "
                            f"item id in the catalog): {lines}")
        return found

    def _lookup(self, query: str, kind: str | None = None) -> Item | None:
        query = " ".join(str(query).split())
        for k in ([kind] if kind else IDENTIFIER_KINDS):
            if query in self._by_identifier.get(k, {}):
                return self._by_identifier[k][query]
        return self.by_id.get(query)

    def _close_hint(self, query: str) -> str:
        close = self.close_matches(query)
        return f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""

    def close_matches(self, query: str, n: int = 3) -> list[str]:
        """Titles close to ``query``: ones that contain it, share most of its words (weighted by how rare each
        word is in the catalog: a long title given by a few of its words), or are spelled alike (difflib)."""
        query = " ".join(str(query).split()).lower()
        if not query:
            return []
        titles = [it.text for it in self.items]
        lowered = [t.lower() for t in titles]
        scores: dict[int, float] = {}
        if len(query) >= 3:
            for i, t in enumerate(lowered):
                if query in t:
                    scores[i] = 2.0 + len(query) / len(t)  # a substring beats anything else; closer lengths first
        words = set(_WORD.findall(query))
        if words:
            postings, idf = self._word_index()
            weight = {w: idf.get(w, math.log(len(titles) + 1) + 1) for w in words}  # unseen words count fully
            total = sum(weight.values())
            shared: dict[int, float] = {}
            for w in words:
                for i in postings.get(w, ()):
                    shared[i] = shared.get(i, 0.0) + weight[w]
            for i, mass in shared.items():
                if mass / total >= 0.5:
                    scores[i] = max(scores.get(i, 0.0), mass / total)
        by_text = {t: i for i, t in enumerate(lowered)}
        for match in difflib.get_close_matches(query, lowered, n=n, cutoff=0.6):
            i = by_text[match]
            scores[i] = max(scores.get(i, 0.0), difflib.SequenceMatcher(None, query, match).ratio())
        best = sorted(scores, key=lambda i: (-scores[i], i))[:n]
        return [titles[i] for i in best]

    def _word_index(self) -> tuple[dict[str, list[int]], dict[str, float]]:
        if self._words is None:
            postings: dict[str, list[int]] = {}
            for i, it in enumerate(self.items):
                for w in set(_WORD.findall(it.text.lower())):
                    postings.setdefault(w, []).append(i)
            n = len(self.items)
            self._words = (postings, {w: math.log((n + 1) / (len(p) + 1)) + 1 for w, p in postings.items()})
        return self._words


_WORD = re.compile(r"\w+")
