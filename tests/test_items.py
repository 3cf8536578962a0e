"""ItemIndex: the CSR prefix trie over item token sequences."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.errors import DataError
from genrec.items.index import ItemIndex

END = 99

# Hand-made example:
#   item 0: 5 6 99      node path 1 2 3
#   item 1: 5 7 99      node path 1 4 5
#   item 2: 8 99        node path 6 7
#   item 3: 5 6 4 99    node path 1 2 8 9
# Nodes are numbered in insertion order; edges of a node are sorted by token.
SEQS = [[5, 6, END], [5, 7, END], [8, END], [5, 6, 4, END]]


@pytest.fixture()
def index():
    return ItemIndex(SEQS, names=["a", "b", "c", "d"])


def test_shape_and_csr_layout(index):
    assert index.num_items == 4
    assert index.num_nodes == 10
    # children: 0 -> {5:1, 8:6}; 1 -> {6:2, 7:4}; 2 -> {99:3, 4:8}; 4 -> {99:5}; 6 -> {99:7}; 8 -> {99:9}
    assert index.child_ptr.tolist() == [0, 2, 4, 6, 6, 7, 7, 8, 8, 9, 9]
    assert index.edge_token.tolist() == [5, 8, 6, 7, 4, 99, 99, 99, 99]
    assert index.edge_child.tolist() == [1, 6, 2, 4, 8, 3, 5, 7, 9]
    assert index.child_ptr.dtype == torch.long


def test_leaves_and_counts(index):
    assert index.leaf_item.tolist() == [-1, -1, -1, 0, -1, 1, -1, 2, -1, 3]
    assert index.leaf_count.tolist() == [4, 3, 2, 1, 1, 1, 1, 1, 1, 1]
    assert index.item_path.tolist() == [[1, 2, 3, -1], [1, 4, 5, -1], [6, 7, -1, -1], [1, 2, 8, 9]]
    assert index.item_length.tolist() == [3, 3, 2, 4]
    assert index.max_depth == 4


def test_allowed_tokens_and_item_of(index):
    assert index.allowed_tokens([]) == [5, 8]
    assert index.allowed_tokens([5]) == [6, 7]
    assert index.allowed_tokens([5, 6]) == [4, 99]
    assert index.allowed_tokens([5, 6, 99]) == []  # at a leaf
    assert index.allowed_tokens([9]) == []  # off the trie
    assert index.item_of([5, 6, 99]) == 0
    assert index.item_of([5, 6, 4, 99]) == 3
    assert index.item_of([8, 99]) == 2
    assert index.item_of([5, 6]) is None  # inner node
    assert index.item_of([5, 9, 99]) is None
    assert index.item_of([]) is None


def test_remaining_counts(index):
    rem = index.remaining_counts([set(), {0}, {0, 3}, {2}, {0, 1, 2, 3}])
    assert rem.shape == (5, index.num_nodes)
    assert rem[0].tolist() == index.leaf_count.tolist()
    assert rem[1].tolist() == [3, 2, 1, 0, 1, 1, 1, 1, 1, 1]
    assert rem[2].tolist() == [2, 1, 0, 0, 1, 1, 1, 1, 0, 0]
    assert rem[3].tolist() == [3, 3, 2, 1, 1, 1, 0, 0, 1, 1]
    assert rem[4].tolist() == [0] * index.num_nodes
    # leaf_count is not modified in place
    assert index.leaf_count.tolist() == [4, 3, 2, 1, 1, 1, 1, 1, 1, 1]


def test_fingerprint():
    a = ItemIndex(SEQS).fingerprint
    assert a == ItemIndex([list(s) for s in SEQS]).fingerprint
    assert a != ItemIndex(SEQS[:3]).fingerprint
    assert a != ItemIndex([[5, 6, END], [5, 7, END], [8, END], [5, 6, 3, END]]).fingerprint
    assert len(a) == 16


def test_duplicates_raise():
    with pytest.raises(DataError) as e:
        ItemIndex([[1, 2, END], [3, END], [1, 2, END]], names=["Heat", "Fargo", "Heat [2]"])
    msg = str(e.value)
    assert "'Heat'" in msg and "'Heat [2]'" in msg and "same ids" in msg


def test_prefix_sequences_raise_in_both_orders():
    # a later sequence extends an earlier complete one
    with pytest.raises(DataError) as e:
        ItemIndex([[1, 2], [1, 2, 3]], names=["short", "long"])
    assert "'short'" in str(e.value) and "'long'" in str(e.value)
    # a later sequence is a prefix of an earlier one
    with pytest.raises(DataError) as e:
        ItemIndex([[1, 2, 3], [1, 2]], names=["long", "short"])
    assert "'short'" in str(e.value) and "prefix" in str(e.value)


def test_empty_catalog_raises():
    with pytest.raises(DataError, match="catalog is empty"):
        ItemIndex([])


def test_single_item():
    idx = ItemIndex([[3, END]])
    assert idx.leaf_count.tolist() == [1, 1, 1]
    assert idx.item_of([3, END]) == 0
    assert idx.allowed_tokens([]) == [3]
    assert idx.remaining_counts([{0}]).tolist() == [[0, 0, 0]]


# --------------------------------------------------------------------------- property test


def _paths(index: ItemIndex) -> list[tuple[list[int], int]]:
    """Every root-to-leaf path of the CSR trie as (tokens, leaf node)."""
    out, stack = [], [(0, [])]
    ptr, tok, kid = index.child_ptr.tolist(), index.edge_token.tolist(), index.edge_child.tolist()
    while stack:
        node, prefix = stack.pop()
        lo, hi = ptr[node], ptr[node + 1]
        if lo == hi:
            out.append((prefix, node))
        for e in range(lo, hi):
            stack.append((kid[e], prefix + [tok[e]]))
    return out


bodies = st.lists(st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=5),
                  min_size=1, max_size=25, unique_by=tuple)


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=bodies, excluded_seed=st.randoms(use_true_random=False))
def test_trie_matches_sequences(bodies, excluded_seed):
    seqs = [b + [END] for b in bodies]  # END never occurs inside a body: no sequence is a prefix of another
    index = ItemIndex(seqs)
    ptr, tok = index.child_ptr.tolist(), index.edge_token.tolist()

    # edges of every node are strictly sorted by token (no duplicate edges)
    for node in range(index.num_nodes):
        toks = tok[ptr[node]:ptr[node + 1]]
        assert toks == sorted(set(toks))

    # every root-to-leaf path spells exactly one input sequence, and the leaf names it
    paths = _paths(index)
    assert sorted(tuple(p) for p, _ in paths) == sorted(tuple(s) for s in seqs)
    for p, leaf in paths:
        assert index.leaf_item[leaf].item() == seqs.index(p)
    assert (index.leaf_item >= 0).sum().item() == len(seqs)

    for i, s in enumerate(seqs):
        assert index.item_of(s) == i
        assert index.item_of(s[:-1]) is None
        # item_path walks the same nodes
        path = index.item_path[i, : len(s)].tolist()
        assert index.leaf_item[path[-1]].item() == i
        assert (index.item_path[i, len(s):] == -1).all()

    # allowed_tokens(prefix) is the set of next tokens among the sequences with that prefix;
    # leaf_count of the prefix's node is how many sequences have that prefix
    prefixes = {tuple(s[:n]) for s in seqs for n in range(len(s) + 1)}
    prefixes |= {(6,), (0, 6), (END, 0)}  # off-trie prefixes
    for prefix in prefixes:
        n = len(prefix)
        matching = [s for s in seqs if tuple(s[:n]) == prefix]
        expected = sorted({s[n] for s in matching if len(s) > n})
        assert index.allowed_tokens(list(prefix)) == expected
    for s in seqs:
        for n in range(1, len(s) + 1):
            node = index.item_path[seqs.index(s), n - 1].item()
            assert index.leaf_count[node].item() == sum(1 for t in seqs if t[:n] == s[:n])
    assert index.leaf_count[0].item() == len(seqs)

    # remaining_counts removes exactly the excluded items under each node
    excluded = {i for i in range(len(seqs)) if excluded_seed.random() < 0.4}
    rem = index.remaining_counts([excluded])[0]
    for s in seqs:
        for n in range(1, len(s) + 1):
            node = index.item_path[seqs.index(s), n - 1].item()
            assert rem[node].item() == sum(1 for j, t in enumerate(seqs) if t[:n] == s[:n] and j not in excluded)
    assert rem[0].item() == len(seqs) - len(excluded)


# ---- sequential indexing (OpenP5) ---------------------------------------------------------------------------

def test_sequential_ids_follow_first_appearance_in_training_parts(toy_data_dir):
    from genrec.config import load_config
    from genrec.data import load_split
    from genrec.data.splits import sequential_numbers

    base = [f"data.path={toy_data_dir}", "data.dataset=toy"]
    split = load_split(load_config(None, base + ["items.id_order=sequential"]))
    numbers = sequential_numbers(split)
    assert sorted(numbers) == list(range(100, 100 + len(split.catalog)))  # 30 items: 3-digit numbers from 100
    first_user = next(iter(split.sequences))
    firsts = list(dict.fromkeys(split.train_part(first_user)))
    assert [numbers[i] for i in firsts] == list(range(100, 100 + len(firsts)))
    assert [split.catalog[i].plain_id for i in firsts[:2]] == ["item_100", "item_101"]
    assert split.catalog.find("item_100").index == firsts[0]
    assert split.catalog[firsts[0]].item_id == load_split(load_config(None, base)).catalog[firsts[0]].item_id
    # only training parts count: a user's validation/test items are numbered where they are trained on
    trained = {i for u in split.sequences for i in split.train_part(u)}
    assert max(numbers[i] for i in trained) < min((numbers[i] for i in set(range(len(split.catalog))) - trained),
                                                  default=10 ** 9)
