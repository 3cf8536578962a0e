"""Tiny synthetic files in the two public benchmark layouts (built in the tests, nothing downloaded):
S3-Rec's sequences file (``Beauty.txt``) and MiniOneRec's pre-split CSVs + ``items.tsv``."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from tiny_fixtures import toy_titles

MINIONEREC_COLUMNS = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id",
                      "history_item_sid", "item_sid"]


def user_sequences(n_users: int = 30, n_items: int = 40, seed: int = 0, repeats: bool = False) -> dict[str, list[int]]:
    """user -> item ids (1-based), oldest first; each user prefers a band of items; ``repeats``: some items
    come back (repeat purchases)."""
    rng = random.Random(seed)
    out = {}
    for u in range(1, n_users + 1):
        band = [(u * 3 + j) % n_items + 1 for j in range(12)]
        seq = rng.sample(band, rng.randint(5, 9))
        if repeats and u % 3 == 0:
            seq.insert(rng.randint(2, len(seq)), seq[0])
        out[str(u)] = seq
    return out


def write_sequences(folder: Path, sequences: dict[str, list[int]] | None = None, name: str = "Beauty.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sequences = sequences or user_sequences()
    (folder / name).write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in sequences.items()))
    return folder


def temporal_rows(sequences: dict[str, list[int]], max_history: int = 10, seed: int = 0):
    """D3's rows: every (history of <= max_history items -> next item) of every user, each with a timestamp,
    sorted by it and cut 8:1:1: (train, valid, test) lists of (user, history, target)."""
    rng = random.Random(seed)
    rows = []
    for user, seq in sequences.items():
        t = rng.uniform(0, 100)
        for p in range(1, len(seq)):
            t += rng.uniform(1, 30)
            rows.append((t, user, seq[max(0, p - max_history):p], seq[p]))
    rows.sort(key=lambda r: r[0])
    a, b = int(0.8 * len(rows)), int(0.9 * len(rows))
    strip = [(u, h, t) for _, u, h, t in rows]
    return strip[:a], strip[a:b], strip[b:]


def write_minionerec(folder: Path, sequences: dict[str, list[int]] | None = None, n_items: int = 40,
                     extra_items: int = 2) -> Path:
    """train/valid/test.csv in MiniOneRec's layout (ids 0-based, list columns as Python list literals) and a
    headerless items.tsv (semantic_id, title, item_id) that also lists ``extra_items`` never in any row."""
    folder.mkdir(parents=True, exist_ok=True)
    sequences = sequences or user_sequences(n_items=n_items, repeats=True)
    titles = toy_titles(n_items + extra_items)

    def title(i: int) -> str:
        return f"{titles[i][0]} Pen, {titles[i][1]}"

    def sid(i: int) -> str:
        return f"<a_{i % 7}><b_{i % 5}><c_{i}>"

    for name, rows in zip(("train", "valid", "test"), temporal_rows(sequences)):
        with (folder / f"{name}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(MINIONEREC_COLUMNS)
            for user, history, target in rows:
                ids = [i - 1 for i in history]
                writer.writerow([f"A{user}", str([title(i) for i in ids]), title(target - 1), str(ids), target - 1,
                                 str([sid(i) for i in ids]), sid(target - 1)])
    (folder / "items.tsv").write_text("".join(f"{sid(i)}\t{title(i)}\t{i}\n" for i in range(n_items + extra_items)))
    return folder
