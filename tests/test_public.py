"""Public benchmarks: the sequences format, MiniOneRec's pre-split files, the temporal split, evaluation over
cases (one per row), the seen-item rule, bad input, the fast atomic reader, the real files' counts and
benchmarks/public.py's plumbing."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from public_fixtures import temporal_rows, user_sequences, write_minionerec, write_sequences

from genrec.baselines.popularity import baseline_metrics
from genrec.config import load_config
from genrec.data import load_split, readers
from genrec.data.splits import describe, sliding_windows, training_examples
from genrec.errors import ConfigError, DataError
from genrec.evaluation.protocol import evaluation_cases, evaluation_users, protocol, rankings_jsonl, score_cases

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def seq_cfg(folder, *extra):
    return load_config(None, [f"data.path={folder}", "data.format=sequences", "data.interactions=Beauty.txt",
                              "data.item_text={item_id}", "data.dataset=beauty", *extra])


def files_cfg(folder, *extra):
    return load_config(None, [f"data.path={folder}", "data.format=minionerec", "data.split=files",
                              "data.items=items.tsv", "data.item_text={title}", "data.dataset=office",
                              "data.max_history=10", *extra])


# --------------------------------------------------------------------------- sequences format


def test_sequences_file_gives_the_leave_one_out_split_of_the_same_log_as_atomic(tmp_path):
    sequences = user_sequences()
    split = load_split(seq_cfg(write_sequences(tmp_path / "s", sequences)))
    # the same log as a RecBole atomic file, positions as timestamps
    atomic = tmp_path / "a"
    atomic.mkdir()
    (atomic / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{p}\n" for u, s in sequences.items() for p, i in enumerate(s)))
    reference = load_split(load_config(None, [f"data.path={atomic}", "data.dataset=x", "data.item_text={item_id}"]))
    assert [it.item_id for it in split.catalog.items] == [it.item_id for it in reference.catalog.items]
    assert split.sequences == reference.sequences
    assert split.protocol == "leave_one_out" and split.cases("test") == reference.cases("test")
    # items keep their file order, the catalog its natural id order; texts are the ids (no item file)
    assert [split.catalog[i].item_id for i in split.sequences["1"]] == [str(i) for i in sequences["1"]]
    assert split.catalog[0].text == split.catalog[0].item_id
    assert split.times["1"] == [float(p) for p in range(len(sequences["1"]))]


def test_sequences_with_an_item_file_and_blank_lines(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "Beauty.txt").write_text("u1 7 8 9\n\n  u2\t8 9 7 \r\nu3 9 7 8\n")
    pd.DataFrame({"item_id": ["7", "8", "9"], "title": ["Lipstick", "Mascara", "Shampoo"]}).to_csv(
        folder / "items.csv", index=False)
    split = load_split(seq_cfg(folder, "data.items=items.csv", "data.item_text={title}"))
    assert [it.text for it in split.catalog.items] == ["Lipstick", "Mascara", "Shampoo"]
    assert split.sequences == {"u1": [0, 1, 2], "u2": [1, 2, 0], "u3": [2, 0, 1]}
    with pytest.raises(DataError, match="items.txt.*extension '.txt'"):
        (folder / "items.txt").write_text("x")
        load_split(seq_cfg(folder, "data.items=items.txt", "data.item_text={title}"))


@pytest.mark.parametrize("body, line, message", [
    ("u1 1 2 3\nu2 5\nu3 1 2 3\n", 2, "user 'u2' has 1 item(s)"),
    ("u1 1 2 3\n\nu2\n", 3, "user 'u2' has 0 item(s)"),
    ("u1 1 2 3\nu2 1 2 3\nu1 4 5 6\n", 3, "user 'u1' already has a line (1)"),
])
def test_sequences_bad_lines_are_named(tmp_path, body, line, message):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "Beauty.txt").write_text(body)
    with pytest.raises(DataError) as e:
        load_split(seq_cfg(folder))
    assert f"Beauty.txt:{line}: {message}" in str(e.value)


def test_sequences_not_utf8_and_no_item_text(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "Beauty.txt").write_bytes(b"u1 1 2 3\nu2 caf\xe9 2 3\n")
    with pytest.raises(DataError, match=r"Beauty\.txt:2: not UTF-8"):
        load_split(seq_cfg(folder))
    write_sequences(folder)
    with pytest.raises(DataError, match="no text for data.item_text"):  # the default item_text needs an item file
        load_split(load_config(None, [f"data.path={folder}", "data.format=sequences", "data.interactions=Beauty.txt"]))


# --------------------------------------------------------------------------- MiniOneRec files


def test_minionerec_files_split_rows_catalog_and_training(tmp_path):
    folder = write_minionerec(tmp_path / "o")
    split = load_split(files_cfg(folder))
    train, valid, test = (pd.read_csv(folder / f"{n}.csv") for n in ("train", "valid", "test"))
    assert len(split.catalog) == 42  # every item of items.tsv, also the two no row names
    assert split.catalog[41].item_id == "41" and split.catalog[41].text == split.catalog[41].fields["title"]
    cases = split.cases("test")
    assert len(cases) == len(test) and len(split.cases("valid")) == len(valid)
    assert cases[0].case_id == "test.csv:2" and cases[0].user_id == test.user_id[0]
    index = {it.item_id: it.index for it in split.catalog.items}
    for case, (_, row) in zip(cases, test.iterrows()):  # each row: its own history, its own target
        assert split.catalog[case.target].item_id == str(row.item_id)
        assert [split.catalog[i].item_id for i in case.history] == [str(i) for i in eval(row.history_item_id)]
        assert split.case_seen(case) == set(case.history)
    # target objective: one example per training row, with that row's history (cut to max_history)
    examples = training_examples(split, files_cfg(folder, "data.max_history=2").data, "target")
    assert len(examples) == len(train)
    assert examples[3].history == tuple(index[str(i)] for i in eval(train.history_item_id[3])[-2:])
    # sequence objective and popularity: each user's rows stitched, each training target counted once
    windows = training_examples(split, files_cfg(folder).data, "sequence")
    assert sum(len(w.sequence) - w.sequence_from for w in windows) == len(train)
    assert split.train_popularity().sum() == len(train) + len(split.sequences)  # + each user's first item
    assert describe(split)["train_rows"] == len(train)


def _set(row: int, column: int, value: str):
    return lambda rows: rows[row].__setitem__(column, value)


@pytest.mark.parametrize("edit, message", [
    (_set(1, 3, "[1, 2"), r"test\.csv:2: column 'history_item_id' must be a Python list literal of item ids, like "
                         r"\[12, 7\] or \['B00X', 'B01Y'\]; found '\[1, 2'"),
    (_set(2, 3, "[1, 98]"), r"test\.csv:3: item '98' \(column 'history_item_id'\) is not in the item file"),
    (_set(3, 4, "99"), r"test\.csv:4: item '99' \(column 'item_id'\) is not in the item file"),
    (_set(1, 3, "[]"), r"test\.csv:2: column 'history_item_id' is an empty list"),
    (_set(0, 3, "history_ids"), r"test\.csv: missing column 'history_item_id' \(config data.history_column\)"
                                r".*; columns found: user_id, .*history_ids"),
    (lambda rows: rows.__delitem__(slice(1, None)), r"test\.csv: no rows"),
])
def test_minionerec_bad_input_names_file_and_line(tmp_path, edit, message):
    import csv

    folder = write_minionerec(tmp_path / "o")
    path = folder / "test.csv"
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    edit(rows)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(DataError, match=message):
        load_split(files_cfg(folder))


def test_minionerec_item_file_layouts_and_config_pairs(tmp_path):
    folder = write_minionerec(tmp_path / "o")
    (folder / "items.tsv").write_text("sid\tname\n<a_1>\tPen\n")
    with pytest.raises(DataError, match="neither a header naming 'item_id'.*semantic_id<TAB>title<TAB>item_id"):
        load_split(files_cfg(folder))
    with pytest.raises(ConfigError, match="data.split=files.*data.format=minionerec"):
        files_cfg(folder, "data.split=leave_one_out")
    with pytest.raises(ConfigError, match="data.split=files"):
        seq_cfg(folder, "data.split=files")
    with pytest.raises(ConfigError, match="data.k_core"):
        files_cfg(folder, "data.k_core=5")
    with pytest.raises(ConfigError, match="temporal_ratios' must be three shares"):
        seq_cfg(folder, "data.split=temporal", "data.temporal_ratios=[0.8,0.1]")
    with pytest.raises(ConfigError, match="temporal_ratios' must be three shares"):
        seq_cfg(folder, "data.split=temporal", "data.temporal_ratios=[0.8,0.3,0.1]")


# --------------------------------------------------------------------------- temporal split


def test_temporal_split_properties(tmp_path):
    rng = random.Random(3)
    rows = [(f"u{rng.randrange(25)}", str(rng.randrange(1, 30)), float(rng.randrange(500))) for _ in range(400)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(tmp_path / "log.csv", index=False)
    cfg = load_config(None, [f"data.path={tmp_path}", "data.format=csv", "data.interactions=log.csv",
                             "data.item_text={item_id}", "data.split=temporal", "data.max_history=4",
                             "data.temporal_ratios=[0.7,0.2,0.1]"])
    split = load_split(cfg)
    total = sum(len(s) - 1 for s in split.sequences.values())
    valid, test = split.cases("valid"), split.cases("test")
    n_train = total - len(valid) - len(test)
    assert n_train == math.floor(0.7 * total) and len(valid) == math.floor(0.9 * total) - n_train  # ratios hold
    train_times = [split.times[u][p] for u, n in split.train_ends.items() for p in range(1, n)]
    assert len(train_times) == n_train
    # no validation/test target earlier than a training one; no test target earlier than a validation one
    assert max(train_times) <= min(c.time for c in valid) and max(c.time for c in valid) <= min(c.time for c in test)
    assert [c.time for c in test] == sorted(c.time for c in test)
    for case in valid + test:  # each case: its own history, the items before its target (cut to max_history)
        seq = split.sequences[case.user_id]
        assert case.case_id == f"{case.user_id}:{case.position}" and case.target == seq[case.position]
        assert split.case_example(case, 4).history == tuple(seq[max(0, case.position - 4):case.position])
        assert split.case_seen(case) == set(seq[:case.position])
    assert len({c.case_id for c in valid + test}) == len(valid) + len(test)
    assert len({c.user_id for c in test}) < len(test)  # some users have several test rows
    # training examples and popularity: training rows only
    examples = sliding_windows(split, 4)
    assert len(examples) == n_train
    counts = np.zeros(len(split.catalog), dtype=np.int64)
    for user, n in split.train_ends.items():
        np.add.at(counts, split.sequences[user][:n], 1)
    assert (split.train_popularity() == counts).all()
    with pytest.raises(DataError, match="several cases"):
        split.example(test[0].user_id, "test", 4)
    d = describe(split)
    assert (d["train_rows"], d["valid_rows"], d["test_rows"]) == (n_train, len(valid), len(test))


def test_temporal_split_with_an_empty_part_is_an_error(tmp_path):
    folder = write_sequences(tmp_path / "s", {"a": [1, 2], "b": [2, 3]})  # 2 rows
    with pytest.raises(DataError, match=r"Beauty\.txt: data.split=temporal cuts 2 rows .*leaves the valid part empty"):
        load_split(seq_cfg(folder, "data.split=temporal"))


def test_temporal_rows_match_minionerec_files_on_the_same_log(tmp_path):
    """The temporal split of a log and the files a D3-style script cut from it hold the same cases."""
    sequences = user_sequences(repeats=True)
    train, valid, test = temporal_rows(sequences, max_history=10, seed=0)
    rng = random.Random(0)
    stamps = []  # the same timestamps temporal_rows drew, per (user, position)
    for user, seq in sequences.items():
        t = rng.uniform(0, 100)
        stamps.append((user, seq[0], t))
        for p in range(1, len(seq)):
            t += rng.uniform(1, 30)
            stamps.append((user, seq[p], t))
    pd.DataFrame(stamps, columns=["user_id", "item_id", "timestamp"]).to_csv(tmp_path / "log.csv", index=False)
    split = load_split(load_config(None, [f"data.path={tmp_path}", "data.format=csv", "data.interactions=log.csv",
                                          "data.item_text={item_id}", "data.split=temporal", "data.max_history=10"]))
    for name, rows in (("valid", valid), ("test", test)):
        got = [(c.user_id, [int(split.catalog[i].item_id) for i in split.case_example(c, 10).history],
                int(split.catalog[c.target].item_id)) for c in split.cases(name)]
        assert got == [(u, h, t) for u, h, t in rows]


# --------------------------------------------------------------------------- evaluation over cases


def test_leave_one_out_cases_are_the_users(tmp_path):
    split = load_split(seq_cfg(write_sequences(tmp_path / "s")))
    cases = split.cases("valid")
    assert [c.case_id for c in cases] == [c.user_id for c in cases] == split.eval_users
    assert all(split.case_example(c, 5) == split.example(c.user_id, "valid", 5) for c in cases)
    assert all(split.case_seen(c) == split.seen(c.user_id, "valid") for c in cases)
    # the seeded user sample is the one leave-one-out always drew
    users = split.eval_users
    position = {u: i for i, u in enumerate(users)}
    old = sorted(random.Random(7).sample(users, 9), key=position.__getitem__)
    assert evaluation_users(split, 9, 7) == old == [c.user_id for c in evaluation_cases(split, 9, 7)]
    line = json.loads(rankings_jsonl(split, cases[:1], {cases[0].case_id: [(0, -1.0)]}).splitlines()[0])
    assert list(line) == ["user_id", "items", "scores"]


def test_popularity_and_metrics_over_rows_with_repeats(tmp_path):
    split = load_split(files_cfg(write_minionerec(tmp_path / "o")))
    cases = split.cases("test")
    repeat = [c for c in cases if c.target in set(c.history)]
    assert repeat  # the synthetic rows hold repeat purchases
    for exclude in (True, False):
        cfg = files_cfg(tmp_path / "o", f"decode.exclude_seen={exclude}", "eval.ks=[3,5,10]")
        out = baseline_metrics(cfg, split, cases, "test")["popularity"]
        assert out["rows"] == len(cases) and out["users"] == len({c.user_id for c in cases})
        assert set(out) >= {"hit@3", "ndcg@5", "hit@10"} and out["duplicate_rate"] == 0.0
    # scoring: a case whose target is in its history can only be hit when seen items are admitted
    rankings = {c.case_id: [(c.target, 0.0)] for c in cases}
    assert score_cases(rankings, split, cases, [1])["hit@1"] == 1.0
    proto = protocol(files_cfg(tmp_path / "o", "decode.exclude_seen=false"), split, cases, "test")
    assert proto["rows"] == len(cases) and proto["seen_items"] == "allowed" and proto["metrics_over"] == "rows"
    assert proto["split"].startswith("files") and proto["ks"] == [1, 5, 10, 20]
    line = json.loads(rankings_jsonl(split, cases[:1], rankings).splitlines()[0])
    assert line["case_id"] == "test.csv:2" and line["items"] == [split.catalog[cases[0].target].item_id]


def test_exclude_seen_false_admits_history_items_and_lists_stay_distinct(tmp_path, tiny_model_dir):
    """Trie-constrained decoding of every catalog item (k = catalog size): with decode.exclude_seen=false
    each list is the whole catalog, history items included; with true, exactly the unseen items."""
    from genrec.evaluation.protocol import rank_cases
    from genrec.recommender import Recommender, prepare

    folder = write_minionerec(tmp_path / "o", n_items=12, extra_items=0,
                              sequences=user_sequences(n_users=12, n_items=12, repeats=True))
    for identifier, template in (("atomic", "next_item_atomic_products.yaml"), ("title", "next_item_title.yaml")):
        lists = {}
        for exclude in (False, True):
            cfg = files_cfg(folder, f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                            f"items.identifier={identifier}", f"prompt.template={REPO / 'prompts' / template}",
                            f"decode.exclude_seen={exclude}", "decode.num_beams=12", "decode.batch_users=4",
                            "eval.ks=[3,5,10]")
            setup = prepare(cfg)
            rec = Recommender(setup.load_model().eval(), setup)
            cases = setup.split.cases("test")
            lists[exclude] = rank_cases(rec, cases, "test", 12)
        for case in cases:
            admitted = [i for i, _ in lists[False][case.case_id]]
            unseen = [i for i, _ in lists[True][case.case_id]]
            assert sorted(admitted) == list(range(12)), identifier  # distinct real items, history included
            assert sorted(unseen) == sorted(set(range(12)) - set(case.history)), identifier


def test_evaluate_and_sasrec_recipes_on_temporal_rows(tmp_path, tiny_model_dir):
    """recipes/evaluate.py (untuned tiny model) and recipes/sasrec.py on a temporal split: one rankings line
    per test row, metrics over rows, the protocol records rows and users."""
    from helpers_recipes import load_recipe

    folder = write_sequences(tmp_path / "s", user_sequences(n_users=30, repeats=True))
    common = [f"data.path={folder}", "data.format=sequences", "data.interactions=Beauty.txt",
              "data.item_text={item_id}", "data.split=temporal", "data.max_history=5", "decode.exclude_seen=false",
              "eval.ks=[3,5,10]", "eval.users=12"]
    split = load_split(load_config(None, common))
    results = load_recipe("evaluate").main([
        *common, f"run.output_dir={tmp_path / 'llm'}", "run.checkpoint=base", f"model.name_or_path={tiny_model_dir}",
        "model.dtype=float32", "items.identifier=atomic", "decode.batch_users=4",
        f"prompt.template={REPO / 'prompts' / 'next_item_atomic_products.yaml'}", "prompt.chat=off"])
    sas = load_recipe("sasrec").main([*common, f"run.output_dir={tmp_path / 'sas'}", "sasrec.epochs=2",
                                      "sasrec.hidden=16", "sasrec.inner=32", "sasrec.max_len=5", "sasrec.stride=5"])
    for out, res in ((tmp_path / "llm", results), (tmp_path / "sas", sas)):
        lines = [json.loads(x) for x in (out / "rankings.jsonl").read_text().splitlines()]
        ids = [c.case_id for c in evaluation_cases(split, 12, 42)]
        assert [x["case_id"] for x in lines] == ids and len(set(ids)) == 12
        assert all(len(set(x["items"])) == len(x["items"]) == 10 for x in lines)
        proto = res["protocol"]
        assert proto["rows"] == 12 == res["metrics"]["rows"] and proto["users"] == len({x["user_id"] for x in lines})
        assert proto["temporal_ratios"] == [0.8, 0.1, 0.1] and proto["ks"] == [3, 5, 10]
        assert res["baselines"]["popularity"]["rows"] == 12 and "hit@3" in res["metrics"]
    # the scale target asks for peak memory beside the time: a process holding a model is well over 10 MB
    assert results["timing"]["peak_rss_mb"] > 10 and results["timing"]["rows_per_s"] > 0


# --------------------------------------------------------------------------- the fast atomic reader


def test_atomic_reader_fast_path_equals_the_line_by_line_pass(tmp_path, monkeypatch):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    "007\t42\t4\t881250949\n\n8\tx \"y\t\t1.5\r\n9\tz\t-inf\t0.1000000000000000055511151231257827\n"
                    "10\tw\t1e400\t+.5\n")
    names, kinds = readers._atomic_header(path)
    fast = readers._read_atomic_fast(path, names, kinds)
    assert fast is not None
    pd.testing.assert_frame_equal(fast, readers._read_atomic_lines(path, names, kinds))
    calls = []
    monkeypatch.setattr(readers, "_read_atomic_lines", lambda *a: calls.append(a))
    readers.read_atomic(path)
    assert not calls  # a clean file never takes the line-by-line pass
    # spellings only Python's float() reads, and bad rows, go to the line-by-line pass (which names the line)
    path.write_text("a:token\tb:float\n1\t 4\n2\t1_000\n")
    assert readers._read_atomic_fast(path, ["a", "b"], ["token", "float"])["b"].tolist() == [4.0, 1000.0]
    path.write_text("a:token\tb:float\n1\t4\n2\tTrue\n")
    assert readers._read_atomic_fast(path, ["a", "b"], ["token", "float"]) is None


# --------------------------------------------------------------------------- the real files


def test_real_public_benchmark_files_counts():
    """Reads ../shared/data (present on every machine of this project) through the shipped configs."""
    beauty = load_split(load_config(str(REPO / "recipes" / "configs" / "beauty" / "smollm2_atomic.yaml"),
                                    [f"data.path={SHARED / 'amazon-beauty-s3rec'}"]))
    assert (len(beauty.sequences), len(beauty.catalog)) == (22363, 12101)
    assert sum(len(s) for s in beauty.sequences.values()) == 198502 and len(beauty.cases("test")) == 22363
    office = load_split(load_config(str(REPO / "recipes" / "configs" / "office" / "smollm2_atomic.yaml"),
                                    [f"data.path={SHARED / 'amazon-office-minionerec'}"]))
    assert (len(office.cases("valid")), len(office.cases("test")), len(office.catalog)) == (4866, 4866, 3459)
    assert len(office.train_rows) == 9484
    repeats = sum(c.target in set(c.history) for c in office.cases("test")) / 4866
    assert 0.02 < repeats < 0.03  # docs/public-benchmarks.md: 2.4% of test targets are already in their history


# --------------------------------------------------------------------------- benchmarks/public.py


@pytest.mark.parametrize("dataset, systems", [("office", ["genrec", "sasrec", "popularity"]),
                                              ("beauty", ["sasrec", "popularity"])])
def test_public_benchmark_smoke(tmp_path, tiny_model_dir, dataset, systems):
    """Every system on Office's layout; Beauty's without the LLM (its recipe's data path, training and
    evaluation on a sequences file are covered above), to keep the suite short."""
    folder = (write_sequences(tmp_path / "data") if dataset == "beauty" else write_minionerec(tmp_path / "data"))
    cmd = [sys.executable, str(REPO / "benchmarks" / "public.py"), "--dataset", dataset, "--smoke", "--out",
           str(tmp_path / "out"), "--systems", *systems, "--set", f"data.path={folder}",
           f"model.name_or_path={tiny_model_dir}", "model.dtype=float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    count = "users" if dataset == "beauty" else "rows"
    assert result["dataset"] == dataset and result[count] == 16 and result["smoke"]
    for system in systems:
        for k in (3, 5, 10):
            assert 0.0 <= result[system][f"ndcg@{k}"] <= result[system][f"hit@{k}"] <= 1.0
    assert result["published"]["models"] and "source" in result["published"]
    assert set(result["train_minutes"]) == set(systems) - {"popularity"}
    for system in systems:  # the same cases and seen-item rule for every system
        proto = json.loads((tmp_path / "out" / "seed-42" / system / "eval_results.json").read_text())["protocol"]
        assert proto["seen_items"] == ("excluded from ranking" if dataset == "beauty" else "allowed")
        assert proto[count] == 16


@pytest.mark.parametrize("reads", [["items.atomic_init=sasrec", "decode.sasrec_weight=0"],
                                   ["decode.sasrec_weight=1.0"]], ids=["item_rows", "ranking"])
def test_public_benchmark_genrec_reading_a_sasrec_trains_it_first_and_counts_it(tmp_path, tiny_model_dir, reads):
    """A genrec recipe that reads a SASRec (item rows from it, or its log-probabilities in the ranking), given as a
    genrec-only override and without a checkpoint: the seed's SASRec is trained (though not asked for as a system),
    its checkpoint is the one genrec reads, and genrec's minutes are its SASRec's plus its LLM's. The Office recipe
    weighs SASRec into its ranking itself, so the item-rows case turns that off to read SASRec through its rows alone."""
    folder = write_minionerec(tmp_path / "data")
    weighed = reads[0].startswith("decode.")
    genrec_only = [*reads, *(["train.eval_every=1", "train.select_best=true"] if weighed else [])]
    common = [f"data.path={folder}", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "public.py"), "--dataset", "office", "--smoke", "--out",
           str(tmp_path / "out"), "--systems", "genrec", "--set", *common, "eval.users=null",
           "--genrec-set", *genrec_only]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "sasrec" not in result and set(result["train_minutes"]) == {"genrec"}
    seed = tmp_path / "out" / "seed-42"
    sas, llm = (json.loads((seed / name / "train_seconds.json").read_text())["seconds"] for name in ("sasrec", "genrec"))
    assert sas > 0 and llm > 0
    assert result["genrec_train_minutes"] == {"sasrec": round(sas / 60, 2), "llm": round(llm / 60, 2)}
    assert result["train_minutes"]["genrec"] == round((sas + llm) / 60, 2)
    assert (seed / "sasrec" / "sasrec.pt").is_file()
    evaluated = json.loads((seed / "genrec" / "eval_results.json").read_text())
    assert evaluated["protocol"]["rows"] == 18  # every test row of the tiny files
    assert evaluated["protocol"]["decoding"].get("sasrec_checkpoint") == (str(seed / "sasrec" / "sasrec.pt") if weighed
                                                                           else None)
    if not weighed:
        return
    lines = [json.loads(line) for line in (seed / "genrec" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "valid_ndcg@10" in r] == [1, 2]
    assert (seed / "genrec" / "best" / "adapter_config.json").is_file()
    # benchmarks/ensembles.py reads the same folder (the final adapter holds the best weights), row by row with repeats admitted: at w=1 it ranks as the
    # evaluation did; w=0 is the LLM alone, a huge w SASRec's ranking
    cmd = [sys.executable, str(REPO / "benchmarks" / "ensembles.py"), "--root", str(tmp_path / "out"), "--seeds", "42",
           "--genrec-config", str(REPO / "recipes" / "configs" / "office" / "smollm2_atomic.yaml"),
           "--sasrec-config", str(REPO / "recipes" / "configs" / "office" / "sasrec.yaml"),
           "--sasrec-weights", "0", "1", "10000", "--set", *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    combos = json.loads(proc.stdout.strip().splitlines()[-1])
    assert combos["rows"] == 18
    assert combos["genrec+sasrec"]["test"]["42 w=1.0"]["ndcg@10"] == round(evaluated["metrics"]["ndcg@10"], 4)
    for split in ("valid", "test"):
        assert combos["genrec+sasrec"][split]["42 w=0.0"] == combos["genrec"][split]["42"]
        assert combos["genrec+sasrec"][split]["42 w=10000.0"] == combos["sasrec"][split]["42"]


# --------------------------------------------------------------------------- benchmarks/transfer.py


def test_transfer_files_read_back_as_genrec_s_own_splits_of_ml100k(tmp_path):
    """benchmarks/transfer.py writes ml-100k in Beauty.txt's and MiniOneRec's layouts; read through the Beauty and
    Office recipes' configs with only the data keys changed, they give back genrec's leave-one-out and temporal
    splits of the same log: the same users, items, titles (commas and quotes included) and cases."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import transfer

    def ids(split, seq):
        return [split.catalog[i].item_id for i in seq]

    beauty = load_split(load_config(REPO / "recipes/configs/beauty/sasrec.yaml",
                                    transfer.write_sequences(tmp_path / "seq")))
    loo = transfer.ml100k_split()
    assert len(beauty.sequences) == 943 and len(beauty.catalog) == 1682
    assert sum(map(len, beauty.sequences.values())) == 100_000
    assert {u: ids(beauty, s) for u, s in beauty.sequences.items()} == {u: ids(loo, s) for u, s in loo.sequences.items()}

    office = load_split(load_config(REPO / "recipes/configs/office/sasrec.yaml",
                                    transfer.write_minionerec(tmp_path / "rows")))
    temporal = transfer.ml100k_split("data.split=temporal", "data.max_history=10")
    assert office.protocol == "files" and len(office.catalog) == 1682
    assert sorted(it.text for it in office.catalog.items) == sorted(it.text for it in temporal.catalog.items)
    assert "Monty Python's Life of Brian (1979)" in {it.text for it in office.catalog.items}
    rows = {name: len(office.cases(name)) for name in ("valid", "test")}
    rows["train"] = len(office.train_rows)
    assert sum(rows.values()) == 100_000 - 943  # every user's history -> next item rows
    assert rows["train"] == math.floor(0.8 * 99_057) and rows["valid"] == math.floor(0.9 * 99_057) - rows["train"]
    for name in ("valid", "test"):
        def keyed(split, case):
            return case.user_id, ids(split, split.case_example(case, 10).history), split.catalog[case.target].item_id
        assert [keyed(office, c) for c in office.cases(name)] == [keyed(temporal, c) for c in temporal.cases(name)]


def test_transfer_smoke_runs_the_beauty_recipes_on_other_data_with_data_keys_only(tmp_path, tiny_model_dir):
    """The harness on transfer's ml-100k file (SASRec and most-popular; the LLM's path on a sequences file is covered
    above): it scores the new data, names it, and shows no published figures, which belong to Beauty."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "transfer.py"), "--layout", "sequences", "--smoke", "--out",
           str(tmp_path), "--systems", "sasrec", "popularity", "--set", f"model.name_or_path={tiny_model_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["dataset"], result["recipes_of"], result["users"]) == ("ml100k-sequences", "beauty", 16)
    assert result["published"] == {}
    assert all(o.startswith("data.") for o in result["transfer"]["overrides"])
    for system in ("sasrec", "popularity"):
        assert 0.0 <= result[system]["ndcg@10"] <= result[system]["hit@10"] <= 1.0
        proto = json.loads((tmp_path / "sequences" / "runs" / "seed-42" / system / "eval_results.json").read_text())
        assert (proto["protocol"]["dataset"], proto["protocol"]["catalog_size"]) == ("ml100k-sequences", 1682)
