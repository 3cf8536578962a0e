"""Config → validated Split: read, filter, build the catalog, order histories, split (data.split)."""

from __future__ import annotations

from pathlib import Path

from genrec.config import Config
from genrec.data.catalog import Catalog
from genrec.data.readers import load_interactions_and_items, read_history_rows, read_items_file
from genrec.data.splits import Split, build_files_split, build_split, k_core, sequential_numbers, temporal_split
from genrec.errors import DataError


def load_split(cfg: Config) -> Split:
    if cfg.data.split == "files":
        split = load_files_split(cfg)
    else:
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
        if cfg.data.split == "temporal":
            split = temporal_split(split, cfg.data.temporal_ratios, str(source))
        elif not split.eval_users:
            raise DataError(f"{source}: no user has the 3 interactions leave-one-out needs (train, validation, test)")
    if cfg.items.id_order == "sequential":
        split.catalog = split.catalog.renumber(sequential_numbers(split), cfg.items.id_format)
    return split


def load_files_split(cfg: Config) -> Split:
    """data.format=minionerec, data.split=files: the train / valid / test row files and the item file. The
    catalog is every item of the item file (the published protocols rank all of them), plus, without an
    item file, every item the rows name; with one, a row naming an item it lacks is an error."""
    data = cfg.data
    base = Path(data.path) if data.path else Path(".")
    files = {"train": base / data.train_file, "valid": base / data.valid_file, "test": base / data.test_file}
    raw = {name: read_history_rows(path, data.user_column, data.history_column, data.item_column)
           for name, path in files.items()}
    item_path = base / data.items if data.items else None
    items = None
    if item_path is not None:
        items = read_items_file(item_path, data.item_column)
        items = items.rename(columns={data.item_column: "item_id"})
        items["item_id"] = items["item_id"].astype(str).str.strip()
        items = items.drop_duplicates("item_id", keep="first").set_index("item_id", drop=False)
        known = set(items.index)
        for name, rows in raw.items():
            for line, _, history, target in rows:
                for column, ids in ((data.history_column, history), (data.item_column, [target])):
                    unknown = [i for i in ids if i not in known]
                    if unknown:
                        raise DataError(f"{files[name]}:{line}: item {unknown[0]!r} (column '{column}') is not in the "
                                        f"item file {item_path}")
        ids = list(items.index)
    else:
        ids = {i for rows in raw.values() for _, _, history, target in rows for i in (*history, target)}
    catalog = Catalog.build(ids, items, data.item_text, cfg.items.id_format, source=str(item_path or files["train"]),
                            missing_text=data.missing_item_text)
    index = {it.item_id: it.index for it in catalog.items}
    rows = {name: [(f"{files[name].name}:{line}", user, [index[h] for h in history], index[target])
                   for line, user, history, target in raw[name]] for name in raw}
    return build_files_split(catalog, rows)
