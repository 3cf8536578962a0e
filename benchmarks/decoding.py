"""Constrained top-K speed: genrec's decoder vs the path the field uses today, in one run.

    .venv/bin/python benchmarks/decoding.py [--users 64] [--baseline-users 8] [--history 20] [--adapter DIR]

Fast path: genrec's batched trie-tensor beam search (model.dtype=auto, shared-prefix
attention, decode.batch_users users per forward, 20 beams, top-20).
Naive path: ``model.generate`` with ``prefix_allowed_tokens_fn`` walking a dict trie,
fp32, one user at a time, 10 beams, 10 returned sequences (BIGRec/OpenP5 style).
Both rank the whole ml-100k catalog (seen items allowed, so both search the same
space) for the same seeded users; the naive path runs on the first
``--baseline-users`` of them. ``topk_agreement`` is the mean overlap@10 between the
two top-10 lists on those users (1.0 = same sets); ``same_settings_agreement`` runs
genrec's decoder with the naive path's settings (fp32, 10 beams) on the same users.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.config import load_config
from genrec.evaluation import evaluation_users
from genrec.modeling import load_adapter, load_base_model
from genrec.recommender import Recommender


def dict_trie(sequences: list[list[int]]) -> dict:
    root: dict = {}
    for seq in sequences:
        node = root
        for tok in seq:
            node = node.setdefault(tok, {})
    return root


def naive_topk(model, prompt: list[int], trie: dict, index, beams: int = 10) -> list[int]:
    start = len(prompt)

    end = index.sequences[0][-1]

    def allowed(_, ids):  # a Python dict walk per beam per step, as the field does it
        node = trie
        for tok in ids[start:].tolist():
            node = node.get(tok)
            if node is None:  # a finished beam padded with the end token
                return [end]
        return list(node) or [end]

    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, num_return_sequences=beams,
                         max_new_tokens=index.max_depth, prefix_allowed_tokens_fn=allowed, do_sample=False,
                         length_penalty=0.0, early_stopping=True, eos_token_id=end, pad_token_id=end)
    items = []
    for row in out[:, start:].tolist():
        stop = row.index(end) + 1 if end in row else len(row)
        item = index.item_of(row[:stop])
        items.append(item if item is not None else -1)
    return items


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="recipes/configs/ml100k/smollm2_lora.yaml")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--baseline-users", type=int, default=8)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--adapter", default=None, help="adapter folder (default: the untuned base model)")
    args = parser.parse_args()
    overrides = [f"data.max_history={args.history}", "decode.exclude_seen=false",
                 f"run.checkpoint={args.adapter or 'base'}"]
    cfg = load_config(args.config, overrides)
    recommender, _ = Recommender.load(cfg)
    setup = recommender.setup
    users = evaluation_users(setup.split, args.users, cfg.run.seed)
    examples = [setup.split.example(u, "test", args.history) for u in users]

    recommender.rank(examples[:2], [set(), set()], 20)  # warm-up
    start = time.perf_counter()
    fast = recommender.rank(examples, [set() for _ in examples], 20)
    fast_s = time.perf_counter() - start

    fp32 = load_config(args.config, overrides + ["model.dtype=float32"])
    base = load_base_model(fp32.model, setup.model_path)
    if args.adapter:
        base = load_adapter(base, Path(args.adapter)).merge_and_unload()
    base.eval()
    trie = dict_trie(setup.index.sequences)
    naive = []
    start = time.perf_counter()
    for ex in examples[: args.baseline_users]:
        naive.append(naive_topk(base, setup.encoder.prompt_ids(ex), trie, setup.index))
    naive_s = time.perf_counter() - start

    n = min(args.baseline_users, len(examples))
    overlap = sum(len({i for i, _ in fast[u][:10]} & set(naive[u][:10])) / 10 for u in range(n)) / n
    # the same search as the naive path (fp32, 10 beams, top-10) through genrec's decoder: isolates the
    # algorithm from the speed settings (bf16, 20 beams)
    same_cfg = copy.deepcopy(setup.cfg)
    same_cfg.decode.num_beams = 10
    same = Recommender(base, dataclasses.replace(setup, cfg=same_cfg))
    same_lists = same.rank(examples[:n], [set() for _ in range(n)], 10)
    same_overlap = sum(len({i for i, _ in same_lists[u]} & set(naive[u][:10])) / 10 for u in range(n)) / n
    same_identical = sum([i for i, _ in same_lists[u]] == naive[u][:10] for u in range(n)) / n
    returned = [i for r in fast for i, _ in r]
    result = {
        "users": len(examples),
        "baseline_users": n,
        "history": args.history,
        "users_per_s": round(len(examples) / fast_s, 3),
        "baseline_users_per_s": round(n / naive_s, 4),
        "speedup": round((len(examples) / fast_s) / (n / naive_s), 2),
        "topk_agreement": round(overlap, 4),
        "agreement_metric": "mean overlap@10 with the naive path's top-10",
        "same_settings_agreement": round(same_overlap, 4),
        "same_settings_identical_lists": round(same_identical, 4),
        "valid_item_rate": sum(0 <= i < setup.index.num_items for i in returned) / len(returned),
        "naive_valid_item_rate": sum(i >= 0 for r in naive for i in r) / sum(len(r) for r in naive),
        "mean_prompt_tokens": round(sum(len(setup.encoder.prompt_ids(e)) for e in examples) / len(examples), 1),
        "adapter": args.adapter,
        "dtype": str(next(recommender.model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
