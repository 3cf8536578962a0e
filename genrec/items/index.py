"""ItemIndex: every catalog item's completion as token ids, and a prefix trie over them.

The trie is stored as flat tensors (CSR layout) so that decoding can expand all
beams of all users with tensor ops, never walking Python dicts per beam:

- ``child_ptr[n] .. child_ptr[n+1]`` are node n's outgoing edges,
- ``edge_token[e]`` the token on edge e, ``edge_child[e]`` the node it leads to,
- ``leaf_item[n]`` the catalog index a leaf node completes (-1 for inner nodes),
- ``leaf_count[n]`` how many items lie under node n,
- ``item_path[i]`` the nodes on item i's path (root excluded; -1 padded).

Every sequence ends with the end token, so no item's sequence is a prefix of
another's and every leaf is exactly one item.
"""

from __future__ import annotations

import hashlib
import json

import torch

from genrec.errors import DataError


class ItemIndex:
    def __init__(self, sequences: list[list[int]], names: list[str] | None = None):
        if not sequences:
            raise DataError("the catalog is empty: nothing to decode")
        self.sequences = [list(map(int, s)) for s in sequences]
        names = names or [str(i) for i in range(len(sequences))]
        children: list[dict[int, int]] = [{}]
        leaf_item = [-1]
        paths = []
        for item, seq in enumerate(self.sequences):
            node, path = 0, []
            for tok in seq:
                if leaf_item[node] >= 0:
                    raise DataError(f"items {names[leaf_item[node]]!r} and {names[item]!r} tokenize to prefix-sharing sequences")
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    leaf_item.append(-1)
                node = nxt
                path.append(node)
            if children[node]:
                raise DataError(f"item {names[item]!r}'s token sequence is a prefix of another item's")
            if leaf_item[node] >= 0:
                raise DataError(
                    f"items {names[leaf_item[node]]!r} and {names[item]!r} tokenize to the same ids; "
                    "make their identifiers differ (data.item_text / items.id_format)"
                )
            leaf_item[node] = item
            paths.append(path)
        ptr, tokens, kids = [0], [], []
        for node_children in children:
            for tok, child in sorted(node_children.items()):
                tokens.append(tok)
                kids.append(child)
            ptr.append(len(tokens))
        self.num_items = len(self.sequences)
        self.num_nodes = len(children)
        self.child_ptr = torch.tensor(ptr, dtype=torch.long)
        self.edge_token = torch.tensor(tokens, dtype=torch.long)
        self.edge_child = torch.tensor(kids, dtype=torch.long)
        self.leaf_item = torch.tensor(leaf_item, dtype=torch.long)
        depth = max(len(p) for p in paths)
        self.max_depth = depth
        self.item_path = torch.full((self.num_items, depth), -1, dtype=torch.long)
        for i, p in enumerate(paths):
            self.item_path[i, : len(p)] = torch.tensor(p)
        self.item_length = torch.tensor([len(s) for s in self.sequences], dtype=torch.long)
        self.first_token = torch.tensor([s[0] for s in self.sequences], dtype=torch.long)
        counts = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        counts.index_add_(0, (self.item_path + 1).flatten(), torch.ones(self.item_path.numel(), dtype=torch.long))
        self.leaf_count = counts[1:].clone()
        self.leaf_count[0] = self.num_items

    def log_mass(self, item_weights) -> torch.Tensor:
        """[nodes]: log of the summed (positive) weights of the items under each node; the root holds all.

        A node prior for decoding: stepping from node to child by ``log_mass[child] - log_mass[node]``
        adds up over an item's path to ``log w(item) - log(sum of all w)``, whatever the path length."""
        w = torch.as_tensor(item_weights, dtype=torch.float64)
        if w.shape != (self.num_items,) or not bool((w > 0).all()):
            raise ValueError(f"log_mass needs one positive weight per item ({self.num_items})")
        return self._over_items_below(w, "sum").log().float()

    def max_below(self, item_values) -> torch.Tensor:
        """[nodes]: the largest value among the items under each node; the root holds the largest of all.

        A node prior for a per-item bonus that does not add up over a path: stepping from node to child
        by ``max_below[child] - max_below[node]`` sums to ``value(item) - max(values)`` at the leaf
        (telescoping), never rises along a path (so the search's exact early stop still holds), and
        only lowers a branch once no item under it can still earn the bonus it was credited."""
        v = torch.as_tensor(item_values, dtype=torch.float64)
        if v.shape != (self.num_items,) or not bool(torch.isfinite(v).all()):
            raise ValueError(f"max_below needs one finite value per item ({self.num_items})")
        return self._over_items_below(v, "amax").float()

    def _over_items_below(self, values: torch.Tensor, reduce: str) -> torch.Tensor:
        """[nodes]: ``reduce`` ("sum" | "amax") of the per-item ``values`` over the items under each node."""
        start = 0.0 if reduce == "sum" else float("-inf")
        out = torch.full((self.num_nodes + 1,), start, dtype=torch.float64)
        out.scatter_reduce_(0, (self.item_path + 1).flatten(), values.repeat_interleave(self.max_depth), reduce=reduce)
        out = out[1:]  # slot 0 collected the -1 padding of shorter paths
        out[0] = values.sum() if reduce == "sum" else values.max()  # the root: no path lists it
        return out

    @property
    def fingerprint(self) -> str:
        """Changes whenever any item's token sequence changes (a catalog or tokenizer change)."""
        return hashlib.sha256(json.dumps(self.sequences).encode()).hexdigest()[:16]

    def on(self, device) -> "ItemIndex":
        """This trie's tensors on ``device``, copied there once (decoding runs batch after batch)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        cache = self.__dict__.setdefault("_on_device", {})
        if str(device) not in cache:
            moved = object.__new__(ItemIndex)
            moved.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_on_device"})
            for name in ("child_ptr", "edge_token", "edge_child", "leaf_item", "item_path", "item_length", "leaf_count",
                         "first_token"):
                setattr(moved, name, getattr(self, name).to(device))
            cache[str(device)] = moved
        return cache[str(device)]

    def remaining_counts(self, excluded: list[set[int]], device=None) -> torch.Tensor:
        """[users, nodes]: items still allowed under each node once each user's excluded items are removed
        (built on ``device`` from one copy of the excluded ids)."""
        trie = self.on(device or "cpu")
        rem = trie.leaf_count.unsqueeze(0).repeat(len(excluded), 1)
        items = [i for row in excluded for i in sorted(row)]
        if items:
            device = rem.device
            rows = torch.repeat_interleave(torch.arange(len(excluded), device=device),
                                           torch.tensor([len(row) for row in excluded], device=device))
            paths = trie.item_path[torch.tensor(items, dtype=torch.long, device=device)]
            owner = rows.unsqueeze(1).expand_as(paths)
            ok = paths >= 0
            rem.index_put_((owner[ok], paths[ok]), torch.tensor(-1, dtype=rem.dtype, device=device), accumulate=True)
            rem[:, 0] -= torch.bincount(rows, minlength=len(excluded))
        return rem

    def allowed_tokens(self, prefix: list[int]) -> list[int]:
        """Tokens allowed after ``prefix`` (a reference walk, used by the naive path and tests)."""
        node = 0
        for tok in prefix:
            lo, hi = self.child_ptr[node].item(), self.child_ptr[node + 1].item()
            match = (self.edge_token[lo:hi] == tok).nonzero()
            if len(match) == 0:
                return []
            node = self.edge_child[lo + match[0, 0]].item()
        lo, hi = self.child_ptr[node].item(), self.child_ptr[node + 1].item()
        return self.edge_token[lo:hi].tolist()

    def item_of(self, tokens: list[int]) -> int | None:
        """The catalog index whose sequence is exactly ``tokens``, else None (a validity check)."""
        node = 0
        for tok in tokens:
            lo, hi = self.child_ptr[node].item(), self.child_ptr[node + 1].item()
            match = (self.edge_token[lo:hi] == tok).nonzero()
            if len(match) == 0:
                return None
            node = self.edge_child[lo + match[0, 0]].item()
        item = self.leaf_item[node].item()
        return item if item >= 0 else None
