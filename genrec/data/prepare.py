"""Config → validated Split: read, filter, build the catalog, order histories."""

from __future__ import annotations

from genrec.config import Config
from genrec.data.catalog import Catalog
from genrec.data.readers import load_interactions_and_items
from genrec.data.splits import Split, build_split, k_core, sequential_numbers
from genrec.errors import DataError


def load_split(cfg: Config) -> Split:
    frame, items, source = load_interactions_and_items(cfg.data)
    if cfg.data.min_rating is not None:
        frame = frame[frame["rating"] >= cfg.data.min_rating]
    frame = k_core(frame, cfg.data.k_core)
    if frame.empty:
        raise DataError(
            f"{source}: no interactions left after filtering (data.min_rating={cfg.data.min_rating}, "
            f"data.k_core={cfg.data.k_core})"
        )
    catalog = Catalog.build(frame["item_id"], items, cfg.data.item_text, cfg.items.id_format, source=str(source),
                            missing_text=cfg.data.missing_item_text)
    split = build_split(frame, catalog)
    if cfg.items.id_order == "sequential":
        split.catalog = catalog.renumber(sequential_numbers(split), cfg.items.id_format)
    if not split.eval_users:
        raise DataError(f"{source}: no user has the 3 interactions leave-one-out needs (train, validation, test)")
    return split
