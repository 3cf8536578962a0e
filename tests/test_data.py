"""Data: RecBole atomic reader, tabular readers, filtering, catalog and leave-one-out split."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from genrec.config import load_config
from genrec.data import load_split
from genrec.data.catalog import Catalog
from genrec.data.readers import read_atomic, read_table
from genrec.data.splits import Example, build_split, describe, k_core, sliding_windows
from genrec.errors import DataError

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token"

# (user, item, rating, timestamp) in file order; users' rows are interleaved on purpose.
ROWS = [
    ("1", "1", 4.0, 10.0),
    ("2", "2", 5.0, 5.0),
    ("1", "2", 3.0, 30.0),  # ties with the (1, 5) row below: file order decides, 2 comes first
    ("3", "1", 2.0, 1.0),
    ("1", "3", 5.0, 20.0),
    ("2", "4", 1.0, 6.0),
    ("1", "5", 4.0, 30.0),
    ("2", "10", 3.0, 7.0),
    ("3", "2", 4.0, 2.0),
    ("2", "1", 5.0, 8.0),
    ("2", "3", 2.0, 9.0),
]
ITEMS = [
    ("1", "Alpha", "1995"),
    ("2", "Beta", "1996"),
    ("3", "Gamma", "1997"),
    ("4", "Alpha", "1995"),  # same text as item 1 -> "Alpha (1995) [2]"
    ("5", "Delta", "1998"),
    ("10", "Epsilon", "1999"),
]
# catalog order is the natural order of ids: 1, 2, 3, 4, 5, 10 -> indices 0..5
TEXTS = ["Alpha (1995)", "Beta (1996)", "Gamma (1997)", "Alpha (1995) [2]", "Delta (1998)", "Epsilon (1999)"]
SEQUENCES = {"1": [0, 2, 1, 4], "2": [1, 3, 5, 0, 2], "3": [0, 1]}


def write_atomic(folder, rows=ROWS, items=ITEMS, name="toy"):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [INTER_HEADER] + [f"{u}\t{i}\t{r:g}\t{t:g}" for u, i, r, t in rows]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    if items is not None:
        lines = [ITEM_HEADER] + ["\t".join(row) for row in items]
        (folder / f"{name}.item").write_text("\n".join(lines) + "\n")
    return folder


def cfg_for(folder, *extra):
    return load_config(None, [f"data.path={folder}", "data.dataset=toy", *extra])


@pytest.fixture()
def toy(tmp_path):
    return write_atomic(tmp_path / "toy")


@pytest.fixture()
def split(toy):
    return load_split(cfg_for(toy))


# --------------------------------------------------------------------------- atomic reader


def test_read_atomic_values_and_types(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\ttags:token_seq\temb:float_seq\n"
        "007\t42\t4\t881250949\tdrama comedy\t0.1 0.2\n"
        "\n"  # blank lines are skipped
        "8\tx y\t\t1.5\t\t3\r\n"
    )
    df = read_atomic(path)
    assert list(df.columns) == ["user_id", "item_id", "rating", "timestamp", "tags", "emb"]
    assert df["user_id"].tolist() == ["007", "8"]  # tokens stay strings, leading zeros kept
    assert df["item_id"].tolist() == ["42", "x y"]
    assert df["rating"].iloc[0] == 4.0 and isinstance(df["rating"].iloc[0], float)
    assert math.isnan(df["rating"].iloc[1])  # empty float -> NaN
    assert df["timestamp"].tolist() == [881250949.0, 1.5]
    assert df["rating"].dtype == float and df["timestamp"].dtype == float
    assert df["tags"].tolist() == ["drama comedy", ""]
    assert df["emb"].tolist() == ["0.1 0.2", "3"]  # float_seq stays a space-separated string


def test_read_atomic_header_without_type(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DataError) as e:
        read_atomic(path)
    msg = str(e.value)
    assert f"{path}:1:" in msg
    assert "'item_id'" in msg and "name:type" in msg


def test_read_atomic_header_unknown_type(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\trating:flaot\n1\t2\n")
    with pytest.raises(DataError) as e:
        read_atomic(path)
    msg = str(e.value)
    assert f"{path}:1:" in msg
    assert "unknown type 'flaot'" in msg
    assert "did you mean 'float'" in msg


def test_read_atomic_wrong_field_count_names_line(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(INTER_HEADER + "\n1\t1\t4\t10\n1\t2\t3\n1\t3\t5\t20\n")
    with pytest.raises(DataError) as e:
        read_atomic(path)
    msg = str(e.value)
    assert "x.inter:3:" in msg
    assert "expected 4" in msg and "found 3" in msg


def test_read_atomic_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(INTER_HEADER + "\n1\t1\t4\t10\n\n1\t2\t3\t1\t9\n")
    with pytest.raises(DataError, match=r"x\.inter:4:"):
        read_atomic(path)


def test_read_atomic_non_numeric_float_names_line_and_field(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(INTER_HEADER + "\n1\t1\t4\t10\n1\t2\t3\t20\n1\t3\tgood\t30\n")
    with pytest.raises(DataError) as e:
        read_atomic(path)
    msg = str(e.value)
    assert "x.inter:4:" in msg
    assert "'rating'" in msg and "'good'" in msg


def test_read_atomic_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_atomic(tmp_path / "nope.inter")


def test_read_atomic_not_utf8_names_line_byte_and_column(tmp_path):
    path = tmp_path / "x.inter"
    path.write_bytes((INTER_HEADER + "\n1\t1\t4\t10\n").encode() + "2\tcafé\t3\t20\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_atomic(path)
    assert str(e.value).startswith(f"{path}:3: not UTF-8 (byte 0xe9 at column 6)")
    item = tmp_path / "y.item"  # a non-ASCII character before the bad byte counts as one column
    item.write_bytes(ITEM_HEADER.encode() + "\n1\tAmélie\t".encode() + b"\x93quoted\x94\t2001\n")
    with pytest.raises(DataError, match=r"y\.item:2: not UTF-8 \(byte 0x93 at column 10\)"):
        read_atomic(item)


def test_read_atomic_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "x.inter"
    path.write_bytes("\ufeff".encode() + (INTER_HEADER + "\n1\t1\t4\t10\n").encode())
    assert list(read_atomic(path).columns) == ["user_id", "item_id", "rating", "timestamp"]


def test_read_atomic_empty_file(tmp_path):
    path = tmp_path / "x.inter"
    path.write_bytes(b"")
    with pytest.raises(DataError) as e:
        read_atomic(path)
    assert str(e.value) == f"{path}: file is empty"
    folder = write_atomic(tmp_path / "d")
    (folder / "toy.item").write_bytes(b"")
    with pytest.raises(DataError, match=r"toy\.item: file is empty"):
        load_split(cfg_for(folder))


@pytest.mark.parametrize("sep, name", [(" ", "spaces"), (",", "commas")])
def test_read_atomic_space_separated_says_tabs(tmp_path, sep, name):
    path = tmp_path / "x.inter"
    path.write_text(INTER_HEADER.replace("\t", sep) + "\n" + sep.join(["196", "242", "3", "881250949"]) + "\n")
    with pytest.raises(DataError) as e:
        read_atomic(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:1: the header is separated by {name}")
    assert "tab-separated" in msg and "expects a number" not in msg


def test_read_atomic_iso_date_in_float_column_points_to_token(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(INTER_HEADER + "\n1\t1\t4\t2024-05-01T10:00:00\n")
    with pytest.raises(DataError, match="x.inter:2: field 'timestamp' expects a number.*declare it timestamp:token"):
        read_atomic(path)


# --------------------------------------------------------------------------- split


def test_split_is_time_ordered_with_file_order_ties(split):
    assert split.sequences == SEQUENCES
    assert [it.text for it in split.catalog.items] == TEXTS
    assert [it.item_id for it in split.catalog.items] == ["1", "2", "3", "4", "5", "10"]
    assert [it.plain_id for it in split.catalog.items] == ["item_1", "item_2", "item_3", "item_4", "item_5", "item_10"]


def test_leave_one_out_examples(split):
    assert split.eval_users == ["1", "2"]  # user 3 has only 2 interactions
    assert split.example("1", "test", 20) == Example("1", (0, 2, 1), 4)
    assert split.example("1", "valid", 20) == Example("1", (0, 2), 1)
    assert split.example("2", "test", 20) == Example("2", (1, 3, 5, 0), 2)
    assert split.example("2", "valid", 20) == Example("2", (1, 3, 5), 0)
    # max_history keeps the most recent items
    assert split.example("2", "test", 2) == Example("2", (5, 0), 2)
    assert split.example("2", "valid", 1) == Example("2", (5,), 0)
    with pytest.raises(DataError, match="user 3 has 2 interactions"):
        split.example("3", "test", 20)


def test_seen_excludes_the_target(split):
    assert split.seen("1", "test") == {0, 2, 1}
    assert split.seen("1", "valid") == {0, 2}
    assert split.seen("2", "test") == {1, 3, 5, 0}
    for user in split.eval_users:
        for name in ("test", "valid"):
            assert split.example(user, name, 20).target not in split.seen(user, name)


def test_train_parts_and_short_users(split):
    assert split.train_part("1") == [0, 2]
    assert split.train_part("2") == [1, 3, 5]
    assert split.train_part("3") == [0, 1]  # < 3 interactions: everything is training


def test_train_popularity_counts_training_parts_only(split):
    # train parts: [0, 2], [1, 3, 5], [0, 1]; item 4 (Delta) only appears as user 1's test target
    assert split.train_popularity().tolist() == [2, 2, 1, 1, 0, 1]


def test_sliding_windows_all(split):
    windows = sliding_windows(split, max_history=20)
    assert windows == [
        Example("1", (0,), 2),
        Example("2", (1,), 3),
        Example("2", (1, 3), 5),
        Example("3", (0,), 1),  # a user without eval examples still trains
    ]
    # no window uses a validation or test target
    for w in windows:
        assert w.target in split.train_part(w.user_id)


def test_sliding_windows_truncation_and_limits(split):
    assert sliding_windows(split, max_history=1) == [
        Example("1", (0,), 2), Example("2", (1,), 3), Example("2", (3,), 5), Example("3", (0,), 1)]
    assert sliding_windows(split, max_history=20, per_user=1) == [
        Example("1", (0,), 2), Example("2", (1, 3), 5), Example("3", (0,), 1)]
    assert sliding_windows(split, max_history=20, per_user=0) == []
    assert sliding_windows(split, max_history=20, min_history=2) == [Example("2", (1, 3), 5)]
    assert sliding_windows(split, max_history=20, min_history=0) == sliding_windows(split, max_history=20)


def test_sliding_windows_long_history_truncated():
    seq = list(range(10))
    items = pd.DataFrame({"user_id": ["u"] * 10, "item_id": [str(i) for i in seq], "timestamp": [float(i) for i in seq]})
    catalog = Catalog.build(items["item_id"], None, "{item_id}", "item_{item_id}")
    sp = build_split(items, catalog)
    windows = sliding_windows(sp, max_history=3)
    assert len(windows) == 7  # training part is items 0..7, targets 1..7
    assert windows[-1] == Example("u", (4, 5, 6), 7)
    assert windows[0] == Example("u", (0,), 1)
    assert all(len(w.history) <= 3 for w in windows)
    assert sliding_windows(sp, max_history=3, per_user=2) == [Example("u", (3, 4, 5), 6), Example("u", (4, 5, 6), 7)]


def test_describe(split):
    assert describe(split) == {"users": 3, "items": 6, "interactions": 11, "eval_users": 2, "median_history": 4.0}


# --------------------------------------------------------------------------- tabular formats


def _tabular_frames():
    inter = pd.DataFrame(
        {"uid": [int(u) for u, *_ in ROWS], "iid": [int(i) for _, i, *_ in ROWS],
         "score": [r for *_, r, _ in ROWS], "ts": [t for *_, t in ROWS]}
    )
    items = pd.DataFrame({"iid": [int(i) for i, *_ in ITEMS], "movie_title": [t for _, t, _ in ITEMS],
                          "release_year": [int(y) for *_, y in ITEMS]})
    return inter, items


def _write_tabular(folder, fmt):
    folder.mkdir(parents=True, exist_ok=True)
    inter, items = _tabular_frames()
    ext = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "parquet": "parquet"}[fmt]
    for frame, name in ((inter, f"events.{ext}"), (items, f"movies.{ext}")):
        path = folder / name
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "tsv":
            frame.to_csv(path, index=False, sep="\t")
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(rec) + "\n" for rec in frame.to_dict("records")))
        else:
            frame.to_parquet(path, index=False)
    return [f"data.path={folder}", f"data.format={fmt}", f"data.interactions=events.{ext}",
            f"data.items=movies.{ext}", "data.user_column=uid", "data.item_column=iid",
            "data.time_column=ts", "data.rating_column=score"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_tabular_formats_give_the_same_split(tmp_path, split, fmt):
    overrides = _write_tabular(tmp_path / fmt, fmt)
    other = load_split(load_config(None, overrides))
    assert other.sequences == split.sequences == SEQUENCES
    assert [it.text for it in other.catalog.items] == TEXTS
    assert [it.item_id for it in other.catalog.items] == [it.item_id for it in split.catalog.items]
    assert other.train_popularity().tolist() == split.train_popularity().tolist()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tabular_min_rating_matches_atomic(tmp_path, toy, fmt):
    overrides = _write_tabular(tmp_path / fmt, fmt)
    a = load_split(cfg_for(toy, "data.min_rating=3"))
    b = load_split(load_config(None, overrides + ["data.min_rating=3"]))
    assert a.sequences == b.sequences
    assert [it.text for it in a.catalog.items] == [it.text for it in b.catalog.items]


def test_tabular_without_item_file_uses_plain_ids_only_when_asked(tmp_path, caplog):
    folder = tmp_path / "noitems"
    folder.mkdir()
    inter, _ = _tabular_frames()
    inter.to_csv(folder / "events.csv", index=False)
    base = [f"data.path={folder}", "data.format=csv", "data.interactions=events.csv", "data.user_column=uid",
            "data.item_column=iid", "data.time_column=ts", "data.rating_column=score"]
    with pytest.raises(DataError) as e:  # the default item_text asks for titles that do not exist
        load_split(load_config(None, base))
    msg = str(e.value)
    assert "6 of 6 items have no text" in msg and "no item file" in msg and "first ids: 1, 2, 3, 4, 5" in msg
    assert "data.missing_item_text=placeholder" in msg and "events.csv" in msg
    with caplog.at_level("WARNING", logger="genrec"):
        sp = load_split(load_config(None, base + ["data.missing_item_text=placeholder"]))
    assert sp.sequences == SEQUENCES
    assert [it.text for it in sp.catalog.items] == ["item_1", "item_2", "item_3", "item_4", "item_5", "item_10"]
    assert "6 of 6 items have no text" in caplog.text and "placeholder" in caplog.text
    # a text made of the id alone needs no item file
    sp = load_split(load_config(None, base + ["data.item_text=product {item_id}"]))
    assert [it.text for it in sp.catalog.items][:2] == ["product 1", "product 2"]


def test_missing_column_names_column_and_config_key(tmp_path, toy):
    with pytest.raises(DataError) as e:
        load_split(cfg_for(toy, "data.user_column=uid"))
    msg = str(e.value)
    assert "missing column 'uid'" in msg and "data.user_column" in msg and "toy.inter" in msg
    assert "user_id" in msg  # lists the columns found

    overrides = _write_tabular(tmp_path / "csv", "csv")
    with pytest.raises(DataError) as e:
        load_split(load_config(None, overrides + ["data.time_column=tss"]))
    msg = str(e.value)
    assert "missing column 'tss'" in msg and "data.time_column" in msg and "did you mean 'ts'" in msg


def test_missing_item_column_in_item_file(tmp_path):
    folder = tmp_path / "csv"
    overrides = _write_tabular(folder, "csv")
    _, items = _tabular_frames()
    items.rename(columns={"iid": "movie"}).to_csv(folder / "movies.csv", index=False)
    with pytest.raises(DataError) as e:
        load_split(load_config(None, overrides))
    assert "movies.csv" in str(e.value) and "missing column 'iid'" in str(e.value)
    assert "data.item_column" in str(e.value)


def test_tabular_non_numeric_timestamp(tmp_path):
    folder = tmp_path / "csv"
    overrides = _write_tabular(folder, "csv")
    inter, _ = _tabular_frames()
    inter["ts"] = inter["ts"].astype(object)
    inter.loc[1, "ts"] = "yesterday"
    inter.to_csv(folder / "events.csv", index=False)
    with pytest.raises(DataError) as e:
        load_split(load_config(None, overrides))
    msg = str(e.value)
    assert "events.csv" in msg and "'ts'" in msg and "row 2" in msg and "'yesterday'" in msg


def test_tabular_not_utf8_and_empty(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"uid,iid,ts\n1,1,10\n2,M\xfcller,20\n")
    with pytest.raises(DataError) as e:
        read_table(path, "csv")
    assert str(e.value).startswith(f"{path}:3: not UTF-8 (byte 0xfc at column 4)")
    path.write_bytes(b"")
    with pytest.raises(DataError) as e:
        read_table(path, "csv")
    assert str(e.value) == f"{path}: file is empty"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "atomic"])
def test_iso_8601_timestamps_are_read_as_utc_seconds(tmp_path, fmt):
    stamps = ["2024-05-01", "2024-05-01T00:00:10Z", "2024-05-01T02:00:20+02:00", "2024-05-01 00:00:30.5"]
    rows = [("u1", "a", stamps[2]), ("u1", "b", stamps[0]), ("u1", "c", stamps[3]), ("u1", "d", stamps[1])]
    folder = tmp_path / fmt
    folder.mkdir()
    if fmt == "csv":
        (folder / "events.csv").write_text("user_id,item_id,timestamp\n" + "".join(",".join(r) + "\n" for r in rows))
        base = ["data.format=csv", "data.interactions=events.csv"]
    elif fmt == "jsonl":
        (folder / "events.jsonl").write_text("".join(json.dumps(dict(zip(("user_id", "item_id", "timestamp"), r))) + "\n"
                                                     for r in rows))
        base = ["data.format=jsonl", "data.interactions=events.jsonl"]
    else:
        (folder / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:token\n" +
                                        "".join("\t".join(r) + "\n" for r in rows))
        base = ["data.dataset=d"]
    sp = load_split(load_config(None, [f"data.path={folder}", "data.item_text={item_id}", *base]))
    start = 1714521600.0  # 2024-05-01T00:00:00Z
    assert sp.times["u1"] == [start, start + 10, start + 20, start + 30.5]
    assert [sp.catalog[i].item_id for i in sp.sequences["u1"]] == ["b", "d", "a", "c"]


def test_timestamps_mixing_numbers_and_dates_or_neither(tmp_path):
    folder = tmp_path / "mix"
    folder.mkdir()
    (folder / "events.csv").write_text("user_id,item_id,timestamp\n1,a,2024-05-01\n1,b,1714521600\n1,c,2024-05-02\n")
    base = [f"data.path={folder}", "data.format=csv", "data.interactions=events.csv", "data.item_text={item_id}"]
    with pytest.raises(DataError, match=r"mixes numbers \(row 2: '1714521600'\) and ISO 8601 dates \(row 1"):
        load_split(load_config(None, base))
    (folder / "events.csv").write_text("user_id,item_id,timestamp\n1,a,2024-05-01\n1,b,May 2nd\n")
    with pytest.raises(DataError, match=r"row 2 expects a number \(unix seconds\) or an ISO 8601 .*'May 2nd'"):
        load_split(load_config(None, base))


def test_unreadable_table(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("not parquet at all")
    with pytest.raises(DataError, match="cannot be read as parquet"):
        read_table(path, "parquet")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match="cannot be read as jsonl"):
        read_table(bad, "jsonl")


def test_min_rating_without_rating_column(tmp_path, toy):
    with pytest.raises(DataError, match="data.min_rating is set but rating column 'stars' is missing"):
        load_split(cfg_for(toy, "data.rating_column=stars", "data.min_rating=3"))
    # without min_rating a missing rating column is fine
    assert load_split(cfg_for(toy, "data.rating_column=stars")).sequences == SEQUENCES


# --------------------------------------------------------------------------- filtering


def test_min_rating_filter(toy):
    sp = load_split(cfg_for(toy, "data.min_rating=3"))
    # dropped: (3, 1, r2), (2, 4, r1), (2, 3, r2); item 4 disappears, so Alpha is no longer duplicated
    assert [it.item_id for it in sp.catalog.items] == ["1", "2", "3", "5", "10"]
    assert [it.text for it in sp.catalog.items] == ["Alpha (1995)", "Beta (1996)", "Gamma (1997)", "Delta (1998)",
                                                   "Epsilon (1999)"]
    assert sp.sequences == {"1": [0, 2, 1, 3], "2": [1, 4, 0], "3": [1]}


def test_k_core_is_iterative():
    frame = pd.DataFrame({
        "user_id": ["A", "A", "B", "B", "C", "C", "D", "D"],
        "item_id": ["a", "b", "a", "b", "c", "d", "c", "e"],
    })
    # round 1 drops d and e (1 interaction each); then C and D have 1 interaction left, so round 2 drops them
    out = k_core(frame, 2)
    assert out["user_id"].tolist() == ["A", "A", "B", "B"]
    assert out["item_id"].tolist() == ["a", "b", "a", "b"]
    assert k_core(frame, 0) is frame and k_core(frame, 1) is frame


def test_k_core_in_load_split(tmp_path):
    rows = []
    t = 0.0
    for u in ("1", "2", "3"):
        for i in ("1", "2", "3"):
            t += 1
            rows.append((u, i, 5.0, t))
    rows.append(("1", "5", 5.0, 100.0))  # item 5 has one interaction
    # user 4 has 3 interactions, but one is item 5 (too rare): once it goes, user 4 falls below k=3
    rows += [("4", "1", 5.0, 50.0), ("4", "2", 5.0, 51.0), ("4", "5", 5.0, 52.0)]
    folder = write_atomic(tmp_path / "kc", rows=rows)
    sp = load_split(cfg_for(folder, "data.k_core=3"))
    assert set(sp.sequences) == {"1", "2", "3"}
    assert [it.item_id for it in sp.catalog.items] == ["1", "2", "3"]
    assert all(seq == [0, 1, 2] for seq in sp.sequences.values())
    # without k-core user 4 and item 5 are there
    full = load_split(cfg_for(folder))
    assert "4" in full.sequences and "5" in full.catalog.by_id


@pytest.mark.parametrize("extra", [["data.min_rating=10"], ["data.k_core=50"]])
def test_nothing_left_after_filtering(toy, extra):
    with pytest.raises(DataError) as e:
        load_split(cfg_for(toy, *extra))
    assert "no interactions left after filtering" in str(e.value)
    assert "toy.inter" in str(e.value)


def test_no_eval_users(tmp_path):
    folder = write_atomic(tmp_path / "short", rows=[("1", "1", 5.0, 1.0), ("1", "2", 5.0, 2.0), ("2", "1", 5.0, 1.0)])
    with pytest.raises(DataError, match="no user has the 3 interactions"):
        load_split(cfg_for(folder))


def test_empty_interaction_file(tmp_path):
    folder = write_atomic(tmp_path / "empty", rows=[])
    with pytest.raises(DataError, match="no interactions"):
        load_split(cfg_for(folder))


def test_data_path_required_for_custom_dataset():
    with pytest.raises(DataError, match="data.path is required"):
        load_split(load_config(None, ["data.dataset=toy"]))


# --------------------------------------------------------------------------- catalog


def test_items_missing_from_item_file_are_an_error_naming_them(tmp_path):
    rows = ROWS + [("1", "99", 4.0, 5.0), ("2", "77", 4.0, 5.0)]
    folder = write_atomic(tmp_path / "extra", rows=rows)
    with pytest.raises(DataError) as e:
        load_split(cfg_for(folder))
    msg = str(e.value)
    assert "2 of 8 items have no text for data.item_text '{movie_title} ({release_year})'" in msg
    assert "first ids: 77, 99" in msg and "missing from the item file" in msg
    assert "data.missing_item_text=placeholder" in msg and "'item_77'" in msg


def test_items_missing_from_item_file_use_plain_id_when_asked(tmp_path, caplog):
    rows = ROWS + [("1", "99", 4.0, 5.0)]
    folder = write_atomic(tmp_path / "extra", rows=rows)
    with caplog.at_level("WARNING", logger="genrec"):
        sp = load_split(cfg_for(folder, "data.missing_item_text=placeholder"))
    item = sp.catalog.by_id["99"]
    assert item.text == "item_99" and item.plain_id == "item_99"
    assert item.index == len(sp.catalog) - 1  # natural order: 99 after 10
    assert sp.catalog.by_id["1"].text == "Alpha (1995)"  # the others keep their titles
    assert "1 of 7 items have no text" in caplog.text and "first ids: 99" in caplog.text


def test_items_whose_text_fields_are_all_empty_lack_text(tmp_path):
    items = ITEMS[:2] + [("3", "", "")] + ITEMS[3:]
    folder = write_atomic(tmp_path / "blank", items=items)
    with pytest.raises(DataError, match=r"1 of 6 items have no text .*first ids: 3\b"):
        load_split(cfg_for(folder))
    # one empty field of two is still a text
    items = ITEMS[:2] + [("3", "Gamma", "")] + ITEMS[3:]
    folder = write_atomic(tmp_path / "half", items=items)
    assert load_split(cfg_for(folder)).catalog.by_id["3"].text == "Gamma ()"


def test_catalog_without_item_file(tmp_path):
    folder = write_atomic(tmp_path / "noitems", items=None)
    with pytest.raises(DataError, match="6 of 6 items have no text .*no item file"):
        load_split(cfg_for(folder, "items.id_format=m{item_id}"))
    sp = load_split(cfg_for(folder, "items.id_format=m{item_id}", "data.missing_item_text=placeholder"))
    assert [it.text for it in sp.catalog.items] == ["m1", "m2", "m3", "m4", "m5", "m10"]


def test_embedded_ml100k_loads_with_every_item_titled():
    sp = load_split(load_config())  # the default config: data.missing_item_text=error
    assert len(sp.catalog) == 1682 and len(sp.sequences) == 943
    assert sp.catalog.by_id["1"].text == "Toy Story (1995)"
    assert not [it for it in sp.catalog.items if it.text == it.plain_id]


def test_item_text_with_unknown_field(toy):
    with pytest.raises(DataError) as e:
        load_split(cfg_for(toy, 'data.item_text="{title} ({release_year})"'))
    msg = str(e.value)
    assert "toy.inter" in msg and "'title'" in msg and "movie_title" in msg


def test_id_format_without_item_id(toy):
    with pytest.raises(DataError, match="maps two items to the same id"):
        load_split(cfg_for(toy, "items.id_format=item"))


def test_duplicate_titles_are_disambiguated():
    frame = pd.DataFrame({"item_id": ["1", "2", "3", "4"], "t": ["X", "Y", "X", "X"]}).set_index("item_id", drop=False)
    catalog = Catalog.build(["4", "3", "2", "1"], frame, "{t}", "item_{item_id}")
    assert [it.text for it in catalog.items] == ["X", "Y", "X [2]", "X [3]"]
    assert len({it.text for it in catalog.items}) == 4


def test_item_text_is_one_line():
    frame = pd.DataFrame({"item_id": ["1"], "t": ["  A \n\t B  "]}).set_index("item_id", drop=False)
    catalog = Catalog.build(["1"], frame, "{t}", "item_{item_id}")
    assert catalog[0].text == "A B"


def test_natural_id_order():
    catalog = Catalog.build(["10", "9", "100", "a2", "a10"], None, "{x}", "i{item_id}")
    assert [it.item_id for it in catalog.items] == ["9", "10", "100", "a2", "a10"]
    assert [it.index for it in catalog.items] == [0, 1, 2, 3, 4]


def test_catalog_find(split):
    cat = split.catalog
    assert cat.find("Gamma (1997)").index == 2
    assert cat.find("  Gamma   (1997) ").index == 2  # whitespace normalised
    assert cat.find("Alpha (1995)").item_id == "1"
    assert cat.find("Alpha (1995) [2]").item_id == "4"
    assert cat.find("item_10").index == 5  # plain id
    assert cat.find("10").index == 5  # original item id
    assert cat.find("item_3", kind="id").index == 2
    assert cat.find("Beta (1996)", kind="title").index == 1


def test_catalog_find_error_lists_close_matches(split):
    with pytest.raises(DataError) as e:
        split.catalog.find("gamma (1998)")
    msg = str(e.value)
    assert "unknown item 'gamma (1998)'" in msg
    assert "close matches" in msg and "'Gamma (1997)'" in msg
    with pytest.raises(DataError) as e:
        split.catalog.find("zzzzzzzzzzzzzzzzzz")
    assert "close matches" not in str(e.value)


def test_disambiguation_never_collides_with_existing_titles():
    frame = pd.DataFrame({"item_id": ["1", "2", "3"], "t": ["X", "X", "X [2]"]}).set_index("item_id", drop=False)
    catalog = Catalog.build(["1", "2", "3"], frame, "{t}", "item_{item_id}")
    texts = [it.text for it in catalog.items]
    assert len(set(texts)) == 3, texts


LONG_TITLES = [
    "Acme Pro X2 Wireless Bluetooth Over-Ear Headphones with Active Noise Cancelling, 40-Hour Battery Life, "
    "Deep Bass, Soft Memory-Foam Ear Cups and Built-in Microphone - Black",
    "Acme Pro X2 Wired Studio Monitor Headphones with Detachable Coiled Cable, 50mm Drivers, Foldable Design "
    "and Carrying Pouch for Recording, Mixing and Podcasting - Silver",
    "Stainless Steel Insulated Water Bottle with Straw Lid, Leak-Proof, Keeps Drinks Cold for 24 Hours and Hot "
    "for 12 Hours, BPA-Free, Wide Mouth, 32 oz - Ocean Blue Gradient",
]


@pytest.fixture()
def products():
    frame = pd.DataFrame({"item_id": ["B01", "B02", "B03"], "title": LONG_TITLES}).set_index("item_id", drop=False)
    return Catalog.build(["B01", "B02", "B03"], frame, "{title}", "item_{item_id}")


def test_long_titles_given_in_part_get_close_matches(products):
    assert all(len(t) > 150 for t in LONG_TITLES)
    # a substring of the title
    assert products.close_matches("Insulated Water Bottle with Straw Lid")[0] == LONG_TITLES[2]
    # a few of its words, out of order, one lower-cased
    assert products.close_matches("noise cancelling wireless headphones")[0] == LONG_TITLES[0]
    assert products.close_matches("studio monitor headphones")[0] == LONG_TITLES[1]
    with pytest.raises(DataError) as e:
        products.find("Acme wireless headphones noise cancelling")
    assert f"close matches: {LONG_TITLES[0]!r}" in str(e.value)
    assert products.close_matches("zzzz qqqq") == []


def test_find_all_reports_every_unknown_item_at_once(products):
    assert [it.item_id for it in products.find_all(["B02", LONG_TITLES[0]])] == ["B02", "B01"]
    with pytest.raises(DataError) as e:
        products.find_all(["B02", "Water Bottle Straw Lid", "zzzz qqqq", "studio monitor headphones"],
                          what="recommend.history")
    msg = str(e.value)
    assert msg.startswith("recommend.history: 3 of 4 items are unknown")
    assert f"'Water Bottle Straw Lid'; close matches: {LONG_TITLES[2]!r}" in msg
    assert "'zzzz qqqq' (nothing close)" in msg
    assert f"'studio monitor headphones'; close matches: {LONG_TITLES[1]!r}" in msg
    with pytest.raises(DataError, match=r"^unknown item 'zzzz qqqq' \(not a title"):  # one unknown: find's message
        products.find_all(["B01", "zzzz qqqq"])


def test_recommend_request_reports_every_unknown_title(products):
    from helpers_recipes import load_recipe
    from genrec.data.splits import Split

    request = load_recipe("recommend").request
    split = Split(products, {"u": [0, 1, 2]})
    cfg = load_config(None, ["recommend.history=B03|Wireless Headphones Noise Cancelling|Monitor Headphones Coiled"])
    with pytest.raises(DataError) as e:
        request(cfg, split)
    msg = str(e.value)
    assert msg.startswith("recommend.history: 2 of 3 items are unknown")
    assert LONG_TITLES[0] in msg and LONG_TITLES[1] in msg
    cfg = load_config(None, ["recommend.history=B03|B01"])
    assert request(cfg, split).history == (2, 0)
