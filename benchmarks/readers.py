"""How fast genrec reads a big interaction log: a synthetic RecBole atomic file and the same log as a
sequences file (one line per user), written into a temporary folder and read through genrec's readers.

    .venv/bin/python benchmarks/readers.py [--rows 10000000] [--users 500000] [--items 100000] [--split]
        [--keep DIR]

For each format it times ``load_interactions_and_items`` (the reader + the interaction frame every later
step starts from) and, for comparison, the atomic file through the line-by-line pass the reader falls back
to when a row is malformed (``--no-slow`` skips that). ``--split`` also times ``load_split`` (filters,
catalog, per-user histories, leave-one-out). Writing the files is not timed. Last line: one JSON object
with rows, file sizes and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.config import load_config  # noqa: E402
from genrec.data import load_split  # noqa: E402
from genrec.data.readers import _atomic_header, _read_atomic_lines, load_interactions_and_items  # noqa: E402


def write_logs(folder: Path, rows: int, users: int, items: int, seed: int = 0) -> tuple[Path, Path]:
    """log.inter (user_id, item_id, rating, timestamp; users interleaved, as in a real log) and log.txt (the
    same interactions, one line per user in time order)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    item = rng.zipf(1.3, rows) % items
    rating = rng.integers(1, 6, rows)
    stamp = 1_500_000_000 + np.sort(rng.integers(0, 200_000_000, rows))
    inter = folder / "log.inter"
    with inter.open("w") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for lo in range(0, rows, 1_000_000):
            hi = min(rows, lo + 1_000_000)
            fh.write("".join(f"u{u}\ti{i}\t{r}\t{t}\n" for u, i, r, t in
                             zip(user[lo:hi].tolist(), item[lo:hi].tolist(), rating[lo:hi].tolist(),
                                 stamp[lo:hi].tolist())))
    order = np.argsort(user, kind="stable")  # per user, time order (stamps are sorted)
    bounds = np.flatnonzero(np.diff(user[order])) + 1
    seq = folder / "log.txt"
    with seq.open("w") as fh:
        for chunk in np.split(order, bounds):
            if len(chunk) >= 2:
                fh.write(f"u{user[chunk[0]]} " + " ".join(f"i{i}" for i in item[chunk].tolist()) + "\n")
    return inter, seq


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return round(time.perf_counter() - start, 2), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--split", action="store_true", help="also time load_split (catalog, histories, split)")
    parser.add_argument("--no-slow", action="store_true", help="skip the line-by-line pass")
    parser.add_argument("--keep", default=None, help="write the files here (kept) instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        write_seconds, (inter, seq) = timed(lambda: write_logs(folder, args.rows, args.users, args.items))
        print(f"wrote {inter.stat().st_size / 1e6:.0f} MB + {seq.stat().st_size / 1e6:.0f} MB in {write_seconds} s",
              flush=True)
        atomic = load_config(None, [f"data.path={folder}", "data.dataset=log", "data.item_text={item_id}"])
        sequences = load_config(None, [f"data.path={folder}", "data.format=sequences", "data.interactions=log.txt",
                                       "data.item_text={item_id}"])
        result = {"rows": args.rows, "users": args.users, "items": args.items,
                  "atomic_mb": round(inter.stat().st_size / 1e6, 1), "sequences_mb": round(seq.stat().st_size / 1e6, 1)}
        result["atomic_read_s"], (frame, _, _) = timed(lambda: load_interactions_and_items(atomic.data))
        print(f"atomic: {len(frame):,} interactions in {result['atomic_read_s']} s", flush=True)
        result["sequences_read_s"], (frame, _, _) = timed(lambda: load_interactions_and_items(sequences.data))
        result["sequences_rows"] = len(frame)
        print(f"sequences: {len(frame):,} interactions in {result['sequences_read_s']} s", flush=True)
        del frame
        if not args.no_slow:
            names, kinds = _atomic_header(inter)
            result["atomic_line_by_line_s"], _ = timed(lambda: _read_atomic_lines(inter, names, kinds))
            print(f"atomic, line-by-line pass: {result['atomic_line_by_line_s']} s", flush=True)
        if args.split:
            result["atomic_load_split_s"], split = timed(lambda: load_split(atomic))
            result["eval_users"] = len(split.eval_users)
            print(f"load_split (atomic): {result['atomic_load_split_s']} s", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
