"""What the catalog says about an item — its genres and release decade — read from configurable fields.

Shared by the rationales of reason-then-recommend and the evidence behind explanations, so that both
read a movie's genres and decade the same way. ml-100k's placeholder genre "unknown" names no genre.
"""

from __future__ import annotations

import re

from genrec.data.catalog import Catalog, Item

PLACEHOLDER_GENRES = frozenset({"unknown"})


class ItemFacts:
    def __init__(self, catalog: Catalog, genre_field: str | None, year_field: str | None):
        self.catalog, self.genre_field, self.year_field = catalog, genre_field, year_field

    def genres(self, item: Item) -> list[str]:
        if not self.genre_field:
            return []
        return [g for g in str(item.fields.get(self.genre_field, "")).split() if g not in PLACEHOLDER_GENRES]

    def year(self, item: Item) -> int | None:
        match = re.search(r"\d{4}", str(item.fields.get(self.year_field, ""))) if self.year_field else None
        return int(match.group()) if match else None

    def decade(self, item: Item) -> str | None:
        year = self.year(item)
        return f"{year // 10 * 10}s" if year is not None else None

    def vocabulary(self) -> set[str]:
        """Every genre some catalog item has."""
        return {g for it in self.catalog.items for g in self.genres(it)}
