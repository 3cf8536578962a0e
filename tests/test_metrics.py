"""Metrics, the popularity baseline, evaluation sharding/sampling and training batch order."""

from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest
import torch

from genrec.baselines.popularity import baseline_metrics, most_popular_unseen
from genrec.config import load_config
from genrec.data.catalog import Catalog
from genrec.data.splits import build_split
from genrec.evaluation.metrics import rank_of, ranking_metrics
from genrec.evaluation.protocol import evaluation_users, shard_batches
from genrec.io import atomic_folder, atomic_path, atomic_write_text
from genrec.training.batching import collate, epoch_batches
from genrec.training.metrics_log import MetricsLog

# --------------------------------------------------------------------------- ranking metrics


def test_rank_of():
    assert rank_of([4, 2, 9], 4) == 1
    assert rank_of([4, 2, 9], 9) == 3
    assert rank_of([4, 2, 9], 7) is None
    assert rank_of([], 1) is None


def test_ranking_metrics_hand_computed():
    rankings = [[5, 1, 2], [1, 2, 5, 3], [1, 2, 3]]  # target 5 at rank 1, rank 3, absent
    m = ranking_metrics(rankings, [5, 5, 5], catalog_size=10, ks=(1, 5, 10))
    assert m["hit@1"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["mrr@1"] == pytest.approx(1 / 3)
    assert m["hit@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3)  # = 0.5
    assert m["ndcg@5"] == pytest.approx(0.5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["hit@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx(0.5)
    assert m["mrr@10"] == pytest.approx(4 / 9)
    assert m["valid_item_rate"] == 1.0
    assert m["duplicate_rate"] == 0.0
    assert m["coverage@10"] == pytest.approx(4 / 10)  # {1, 2, 3, 5}
    assert m["users"] == 3
    assert "hit@20" not in m


def test_ranking_metrics_cutoffs():
    ranking = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    m = ranking_metrics([ranking], [6], catalog_size=10, ks=(5, 10, 20))  # target at rank 7
    assert m["hit@5"] == 0.0 and m["ndcg@5"] == 0.0 and m["mrr@5"] == 0.0
    assert m["hit@10"] == 1.0
    assert m["ndcg@10"] == pytest.approx(1 / 3)  # 1 / log2(8)
    assert m["mrr@10"] == pytest.approx(1 / 7)
    assert m["hit@20"] == 1.0


def test_valid_item_rate_and_duplicates():
    rankings = [[1, None, 12, 1, -1], [3, 3, 3, "4"]]
    m = ranking_metrics(rankings, [1, 3], catalog_size=10, ks=(1,))
    # returned 9; valid: 1, 1, 3, 3, 3 (None, 12, -1 and the string "4" are not catalog indices)
    assert m["valid_item_rate"] == pytest.approx(5 / 9)
    # duplicates: list 1 repeats 1 once, list 2 repeats 3 twice
    assert m["duplicate_rate"] == pytest.approx(3 / 9)
    assert m["coverage@10"] == pytest.approx(2 / 10)
    assert m["hit@1"] == 1.0


def test_coverage_uses_top10_only():
    ranking = list(range(15))
    m = ranking_metrics([ranking, ranking[::-1]], [0, 0], catalog_size=20, ks=(10,))
    assert m["coverage@10"] == pytest.approx(15 / 20)  # 0..9 and 14..5
    m = ranking_metrics([ranking], [0], catalog_size=20, ks=(10,))
    assert m["coverage@10"] == pytest.approx(10 / 20)


def test_ranking_metrics_edge_cases():
    with pytest.raises(ValueError):
        ranking_metrics([[1]], [1, 2], catalog_size=5)
    m = ranking_metrics([], [], catalog_size=5, ks=(1,))
    assert m == {"hit@1": 0.0, "ndcg@1": 0.0, "mrr@1": 0.0, "valid_item_rate": 1.0, "duplicate_rate": 0.0,
                 "coverage@10": 0.0, "users": 0}
    m = ranking_metrics([[]], [0], catalog_size=5, ks=(1,))
    assert m["hit@1"] == 0.0 and m["valid_item_rate"] == 1.0


# --------------------------------------------------------------------------- popularity baseline


@pytest.fixture()
def toy_split():
    rows = [
        ("U1", "1", 1), ("U1", "2", 2), ("U1", "3", 3), ("U1", "4", 4),
        ("U2", "1", 1), ("U2", "2", 2), ("U2", "5", 3), ("U2", "6", 4), ("U2", "3", 5),
        ("U3", "1", 1), ("U3", "5", 2),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": float})
    catalog = Catalog.build(frame["item_id"], None, "{x}", "item_{item_id}")
    return build_split(frame, catalog)


def test_toy_split(toy_split):
    # items 1..6 -> indices 0..5
    assert toy_split.sequences == {"U1": [0, 1, 2, 3], "U2": [0, 1, 4, 5, 2], "U3": [0, 4]}
    # training parts [0, 1], [0, 1, 4], [0, 4]
    assert toy_split.train_popularity().tolist() == [3, 2, 0, 0, 2, 0]


def test_most_popular_unseen(toy_split):
    # popularity order (ties by index): 0, 1, 4, 2, 3, 5
    assert most_popular_unseen(toy_split, ["U1", "U2"], "test", 3) == [[4, 3, 5], [2, 3]]
    assert most_popular_unseen(toy_split, ["U1", "U2"], "valid", 3) == [[4, 2, 3], [2, 3, 5]]
    assert most_popular_unseen(toy_split, ["U1", "U2"], "test", 3, exclude_seen=False) == [[0, 1, 4], [0, 1, 4]]
    assert most_popular_unseen(toy_split, ["U2"], "test", 1) == [[2]]
    for user, ranking in zip(["U1", "U2"], most_popular_unseen(toy_split, ["U1", "U2"], "test", 6)):
        assert not set(ranking) & toy_split.seen(user, "test")


def test_baseline_metrics(toy_split):
    cfg = load_config(None, ["eval.ks=[1,2]"])
    out = baseline_metrics(cfg, toy_split, ["U1", "U2"], "test")
    m = out["popularity"]
    # U1: [4, 3], target 3 at rank 2; U2: [2, 3], target 2 at rank 1
    assert m["hit@1"] == pytest.approx(0.5)
    assert m["hit@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert m["mrr@2"] == pytest.approx(0.75)
    assert m["users"] == 2


# --------------------------------------------------------------------------- evaluation sharding and sampling

LENGTHS = [5, 3, 9, 1, 7, 3, 2, 8, 6, 4]


def test_shard_batches_concrete():
    # order by (length, position): 3, 6, 1, 5, 9, 0, 8, 4, 7, 2
    assert shard_batches(LENGTHS, 3, 0, 1) == [[3, 6, 1], [5, 9, 0], [8, 4, 7], [2]]
    assert shard_batches(LENGTHS, 3, 0, 2) == [[3, 6, 1], [8, 4, 7]]
    assert shard_batches(LENGTHS, 3, 1, 2) == [[5, 9, 0], [2]]
    assert shard_batches(LENGTHS, 3, 0, 3) == [[3, 6, 1], [2]]
    assert shard_batches(LENGTHS, 3, 1, 3) == [[5, 9, 0]]
    assert shard_batches(LENGTHS, 3, 2, 3) == [[8, 4, 7]]
    assert shard_batches(LENGTHS, 3, 4, 5) == []


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 7, 50])
def test_shard_batches_cover_every_position_once(batch_size):
    rng = random.Random(batch_size)
    lengths = [rng.randint(1, 20) for _ in range(37)]
    single = shard_batches(lengths, batch_size, 0, 1)
    for world in (1, 2, 3):
        shards = [shard_batches(lengths, batch_size, r, world) for r in range(world)]
        positions = [i for shard in shards for batch in shard for i in batch]
        assert sorted(positions) == list(range(len(lengths)))  # every position exactly once
        # the same batches as a single process, whatever the number of processes
        assert sorted(b for shard in shards for b in shard) == sorted(single)


@pytest.fixture()
def many_users_split():
    rows = [(f"u{u:02d}", str(i), float(t)) for u in range(30) for t, i in enumerate([1, 2, 3, u % 5 + 4])]
    rows += [("short", "1", 0.0)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return build_split(frame, Catalog.build(frame["item_id"], None, "{x}", "item_{item_id}"))


def test_evaluation_users_seeded_and_stable(many_users_split):
    users = many_users_split.eval_users
    assert len(users) == 30 and "short" not in users
    a = evaluation_users(many_users_split, 10, seed=1)
    assert a == evaluation_users(many_users_split, 10, seed=1)
    assert len(a) == 10 and len(set(a)) == 10
    assert set(a) <= set(users)
    assert a == sorted(a, key=users.index)  # kept in the split's order
    assert a == sorted(random.Random(1).sample(users, 10), key=users.index)
    assert a != evaluation_users(many_users_split, 10, seed=2)
    # a smaller sample with the same seed is not required to be a subset, but it must be stable too
    assert evaluation_users(many_users_split, 5, seed=1) == evaluation_users(many_users_split, 5, seed=1)
    assert evaluation_users(many_users_split, None, seed=1) == users
    assert evaluation_users(many_users_split, 30, seed=1) == users
    assert evaluation_users(many_users_split, 100, seed=1) == users


# --------------------------------------------------------------------------- training batch order and collation


def test_epoch_batches_deterministic_and_complete():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(103)]
    a = epoch_batches(lengths, 8, seed=3, epoch=0)
    assert a == epoch_batches(lengths, 8, seed=3, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(103))
    assert sorted(len(b) for b in a) == [7] + [8] * 12
    assert a != epoch_batches(lengths, 8, seed=3, epoch=1)
    assert a != epoch_batches(lengths, 8, seed=4, epoch=0)
    for epoch in range(1, 4):
        b = epoch_batches(lengths, 8, seed=3, epoch=epoch)
        assert sorted(i for batch in b for i in batch) == list(range(103))


def test_epoch_batches_group_lengths_within_a_chunk():
    lengths = list(range(64))
    random.Random(1).shuffle(lengths)
    batches = epoch_batches(lengths, 4, seed=0, epoch=0, group=64)  # one chunk: batches are length bands
    bands = sorted(sorted(lengths[i] for i in b) for b in batches)
    assert bands == [list(range(lo, lo + 4)) for lo in range(0, 64, 4)]
    # with group=1 every chunk is one batch: no sorting across the whole set
    small = epoch_batches(lengths, 4, seed=0, epoch=0, group=1)
    assert sorted(i for b in small for i in b) == list(range(64))
    assert small != batches


def test_epoch_batches_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(1).item()
    torch.manual_seed(123)
    epoch_batches([1, 2, 3, 4, 5], 2, seed=0, epoch=0)
    assert torch.rand(1).item() == expected


def test_collate_left_pads():
    rows = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, -100, 4, 5]},
        {"input_ids": [7, 8, 9], "labels": [-100, 8, 9]},
        {"input_ids": [10, 11, 12, 13], "labels": [-100, 11, 12, 13]},
    ]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [0, 0, 7, 8, 9], [0, 10, 11, 12, 13]]
    assert batch["labels"].tolist() == [
        [-100, -100, -100, 4, 5], [-100, -100, -100, 8, 9], [-100, -100, 11, 12, 13]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2], [0, 0, 1, 2, 3]]
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long
    # logits are kept exactly where the next token is a label
    assert batch["loss_positions"].tolist() == [
        [False, False, True, True, False], [False, False, True, True, False], [False, True, True, True, False]]


def test_collate_pad_id_and_no_completion():
    batch = collate([{"input_ids": [4, 5], "labels": [-100, -100]}, {"input_ids": [6], "labels": [-100]}], pad_id=99)
    assert batch["input_ids"].tolist() == [[4, 5], [99, 6]]
    assert (batch["labels"] == -100).all()
    assert not batch["loss_positions"].any()


# --------------------------------------------------------------------------- logs and atomic writes


def test_metrics_log(tmp_path):
    path = tmp_path / "logs" / "metrics.jsonl"
    log = MetricsLog(path)
    log.write({"step": 1, "loss": 2.5})
    log.write({"step": 2, "loss": 1.25, "note": "x"})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.25, "note": "x"}]
    MetricsLog(path).write({"step": 3})  # appends, does not truncate
    assert len(path.read_text().splitlines()) == 3
    off = tmp_path / "off" / "metrics.jsonl"
    MetricsLog(off, enabled=False).write({"step": 1})
    assert not off.exists()


def test_atomic_write_text(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "one")
    assert path.read_text() == "one"
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]  # no temporary file left behind


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "model.pt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # the temporary is gone too


def test_atomic_folder_replaces_an_owned_folder_and_lets_the_first_shared_writer_win(tmp_path):
    folder = tmp_path / "checkpoints" / "step-2"
    for text in ("first", "second"):
        with atomic_folder(folder) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(text)
    assert (folder / "weights").read_text() == "second"
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            tmp.mkdir()
            raise RuntimeError("killed mid-write")
    assert (folder / "weights").read_text() == "second"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["step-2"]  # no .tmp or .old left behind
    cache = tmp_path / "cache"
    for text in ("first", "late"):  # a second process finishing the same cache finds it in place
        with atomic_folder(cache, shared=True) as tmp:
            tmp.mkdir()
            (tmp / "data").write_text(text)
    assert (cache / "data").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "checkpoints"]
