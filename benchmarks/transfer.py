"""Transfer check: the public-benchmark recipes on data they were not made on, with only the data keys changed.

    .venv/bin/python benchmarks/transfer.py --layout sequences  [--seeds 42] [--out runs/transfer]
    .venv/bin/python benchmarks/transfer.py --layout minionerec [--seeds 42] [--out runs/transfer]

The issue asks that the Beauty recipe stay ahead of SASRec on another dataset of ``Beauty.txt``'s format and
the Office recipe on another dataset of MiniOneRec's layout. The only other dataset on this machine (no network)
is MovieLens-100K, inside the recbole wheel. This script writes it in each published layout, exactly as a user
would bring it, and then runs ``benchmarks/public.py`` unchanged with ``--set data.*`` overrides alone:

- ``sequences``: S3-Rec's ``Beauty.txt`` layout, one line per user ``user_id item_id item_id ...`` in time order
  (ties kept in file order), no titles; run with the Beauty recipes (leave-one-out, seen items excluded).
- ``minionerec``: MiniOneRec's CSVs: every (history of <= 10 items -> next item) row of every user, sorted by the
  target's timestamp and cut globally 8:1:1, with ``items.tsv`` (``semantic_id<TAB>title<TAB>item_id``,
  ``title`` = "Movie title (year)", no semantic ids: the column is left empty); run with the Office recipes
  (repeats count, every test row). Unlike Office's reconstructed ``train.csv``, every training row is kept.

Caveat: ml-100k is where genrec's model recipe was first tuned, so this shows that the recipes run and compare
on other data by config alone, not how they do on a dataset nobody here has seen.

Last line: public.py's JSON object (``dataset`` the data written here, ``recipes_of`` the recipes' own dataset,
``published`` empty: no published figures for this data), plus ``transfer``: the layout, the files written and the
data overrides.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import public  # noqa: E402

HISTORY = 10  # MiniOneRec's history length
ML100K = ["data.dataset=ml-100k", "data.item_text={movie_title} ({release_year})"]  # the ml-100k recipe's text


def ml100k_split(*overrides: str):
    """ml-100k through genrec's own reader and split code (so the files hold exactly genrec's protocol)."""
    from genrec.config import load_config
    from genrec.data import load_split

    return load_split(load_config(None, [*ML100K, *overrides]))


def write_sequences(folder: Path) -> list[str]:
    """S3-Rec's layout: each user's items oldest first (genrec's reader orders them by timestamp, ties in
    file order)."""
    split = ml100k_split()
    ids = [it.item_id for it in split.catalog.items]
    folder.mkdir(parents=True, exist_ok=True)
    lines = [" ".join([u, *(ids[i] for i in seq)]) for u, seq in sorted(split.sequences.items(), key=lambda kv: int(kv[0]))]
    (folder / "ml100k.txt").write_text("\n".join(lines) + "\n")
    return [f"data.path={folder}", "data.dataset=ml100k-sequences", "data.interactions=ml100k.txt"]


def write_minionerec(folder: Path) -> list[str]:
    """MiniOneRec's layout from genrec's ``data.split=temporal`` (8:1:1 of every history -> next item row, cut
    globally by the target's time): training rows per user in time order, valid/test rows as the split orders
    them."""
    split = ml100k_split("data.split=temporal", f"data.max_history={HISTORY}")
    items = split.catalog.items
    rows = {"train.csv": [(u, seq[max(0, p - HISTORY):p], seq[p]) for u, seq in split.sequences.items()
                          for p in range(1, split.train_ends.get(u, 0))]}
    for name in ("valid", "test"):
        rows[f"{name}.csv"] = [(c.user_id, list(split.case_example(c, HISTORY).history), c.target)
                               for c in split.cases(name)]
    folder.mkdir(parents=True, exist_ok=True)
    header = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid",
              "item_sid"]
    for name, part in rows.items():
        with (folder / name).open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(header)
            for user, history, target in part:
                out.writerow([user, repr([items[h].text for h in history]), items[target].text,
                              repr([int(items[h].item_id) for h in history]), int(items[target].item_id), "[]", ""])
    with (folder / "items.tsv").open("w") as fh:  # no semantic ids: the first column is left empty
        fh.writelines(f"\t{it.text}\t{it.item_id}\n" for it in items)
    return [f"data.path={folder}", "data.dataset=ml100k-minionerec"]


LAYOUTS = {"sequences": ("beauty", write_sequences), "minionerec": ("office", write_minionerec)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--out", default=str(REPO / "runs" / "transfer"))
    parser.add_argument("--systems", nargs="+", default=list(public.SYSTEMS), choices=public.SYSTEMS)
    parser.add_argument("--smoke", action="store_true", help="public.py's plumbing budgets")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides (tests: the model)")
    args = parser.parse_args(argv)
    recipe, write = LAYOUTS[args.layout]
    out = Path(args.out) / args.layout
    data = write(out / "data")
    result = public.main(["--dataset", recipe, "--seeds", *map(str, args.seeds), "--out", str(out / "runs"),
                          "--systems", *args.systems,
                          *(["--smoke"] if args.smoke else []), "--set", *data, *args.set])
    result["transfer"] = {"layout": args.layout, "data": "MovieLens-100K (recbole wheel)",
                          "overrides": data, "files": sorted(p.name for p in (out / "data").iterdir())}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
