"""The item catalog: every recommendable item, its text fields and identifiers.

Each item has a dense index (0..n-1, used everywhere inside genrec), its original
id, its fields and three identifier strings: ``text`` (e.g. "Toy Story (1995)"),
``plain_id`` (e.g. "item_1"), the atomic token ``<item_1>`` (one new tokenizer token per item) and,
once assigned, the semantic id ``<a_3><b_17><c_0><d_0>`` (genrec.semantic_ids). Duplicate texts are disambiguated with a " [2]",
" [3]" suffix so that each generated string names exactly one item.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass, field, replace

import pandas as pd

from genrec.errors import DataError


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
                raise DataError(f"item {self.item_id} has no semantic id yet (genrec.semantic_ids assigns them)")
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

    def assign_semantic(self, strings: list[str]) -> None:
        """Give every item its semantic-id string (catalog order); strings must be distinct."""
        if len(strings) != len(self.items) or len(set(strings)) != len(strings):
            raise DataError(f"semantic ids: expected {len(self.items)} distinct strings, got "
                            f"{len(set(strings))} distinct of {len(strings)}")
        self.__init__([replace(it, semantic=s) for it, s in zip(self.items, strings)])

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
    def build(cls, item_ids, item_frame: pd.DataFrame | None, text_format: str, id_format: str, source: str = "items") -> "Catalog":
        """Catalog over ``item_ids`` (those seen in interactions), text from ``item_frame`` if given."""
        ids = sorted({str(i) for i in item_ids}, key=lambda i: (_natural_key(i), i))  # total order: "1" vs "01"
        needed = _format_fields(text_format)
        if item_frame is not None:
            missing = [f for f in needed if f not in item_frame.columns and f != "item_id"]
            if missing:
                raise DataError(
                    f"{source}: data.item_text '{text_format}' uses field(s) {missing} that the item file lacks; "
                    f"fields found: {', '.join(map(str, item_frame.columns))}"
                )
            records = item_frame.to_dict("index")
        else:
            records = {}
        items, seen_text, taken = [], {}, set()
        for index, item_id in enumerate(ids):
            fields = {k: ("" if pd.isna(v) else v) for k, v in records.get(item_id, {}).items()}
            fields["item_id"] = item_id
            if item_frame is not None and item_id in records:
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
        query = " ".join(str(query).split())
        for k in ([kind] if kind else IDENTIFIER_KINDS):
            if query in self._by_identifier.get(k, {}):
                return self._by_identifier[k][query]
        if query in self.by_id:
            return self.by_id[query]
        names = list(self._by_identifier["title"])
        lowered = {n.lower(): n for n in names}
        close = difflib.get_close_matches(query.lower(), list(lowered), n=3, cutoff=0.6)
        hint = f"; close matches: {', '.join(repr(lowered[c]) for c in close)}" if close else ""
        raise DataError(f"unknown item {query!r} (not a title, plain id or item id in the catalog){hint}")
