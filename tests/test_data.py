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


def test_tabular_without_item_file_uses_plain_ids(tmp_path):
    folder = tmp_path / "noitems"
    folder.mkdir()
    inter, _ = _tabular_frames()
    inter.to_csv(folder / "events.csv", index=False)
    sp = load_split(load_config(None, [f"data.path={folder}", "data.format=csv", "data.interactions=events.csv",
                                       "data.user_column=uid", "data.item_column=iid", "data.time_column=ts",
                                       "data.rating_column=score"]))
    assert sp.sequences == SEQUENCES
    assert [it.text for it in sp.catalog.items] == ["item_1", "item_2", "item_3", "item_4", "item_5", "item_10"]


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


def test_items_missing_from_item_file_use_plain_id(tmp_path):
    rows = ROWS + [("1", "99", 4.0, 5.0)]
    folder = write_atomic(tmp_path / "extra", rows=rows)
    sp = load_split(cfg_for(folder))
    item = sp.catalog.by_id["99"]
    assert item.text == "item_99" and item.plain_id == "item_99"
    assert item.index == len(sp.catalog) - 1  # natural order: 99 after 10


def test_catalog_without_item_file(tmp_path):
    folder = write_atomic(tmp_path / "noitems", items=None)
    sp = load_split(cfg_for(folder, "items.id_format=m{item_id}"))
    assert [it.text for it in sp.catalog.items] == ["m1", "m2", "m3", "m4", "m5", "m10"]


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
