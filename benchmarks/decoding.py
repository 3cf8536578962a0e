"""Constrained top-K speed: genrec's decoder vs the path the field uses today, in one run.

    .venv/bin/python benchmarks/decoding.py [--users 64] [--baseline-users 16] [--exact-users 8]
        [--history 20] [--adapter DIR] [--dtype auto|float32|bfloat16]

Fast path: genrec's batched trie-tensor beam search (model.dtype=auto, fp32 output
layer, shared-prefix attention, decode.batch_users users per forward). Timed at the
evaluation default (20 beams, top-20: ``users_per_s``, used for ``speedup``) and at
the naive path's width (10 beams, top-10: ``users_per_s_same_width``).
Naive path: ``model.generate`` with ``prefix_allowed_tokens_fn`` walking a dict trie,
fp32, one user at a time, 10 beams, 10 returned sequences (BIGRec/OpenP5 style),
generate's default stopping rule; length_penalty 0 on both sides so both maximise the
same score (the sequence log-probability).
Both rank the whole ml-100k catalog (seen items allowed, so both search the same
space) for the same seeded users; the naive path runs on the first
``--baseline-users`` of them.

Agreement figures are mean overlap@10 of two top-10 lists (1.0 = same sets):
``topk_agreement``: genrec at the naive path's width vs the naive path;
``same_settings_agreement``: genrec in fp32 at that width vs the naive path (isolates
the search algorithm from bf16); ``dtype_agreement_all_users``: genrec at the default
dtype vs genrec in fp32, both at 10 beams, on all ``--users`` (where the fp32 run
reproduces the naive path's lists, this is the agreement with it on more users than
the naive path can afford to run); with ``--exact-users N`` > 0 also each path vs the
exact top-10 (every catalog item scored in fp32, found by a search that never prunes
below the exact bound), showing what beam width costs.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.config import load_config
from genrec.evaluation.protocol import evaluation_users
from genrec.model.loading import load_adapter, load_base_model
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
                         length_penalty=0.0, eos_token_id=end, pad_token_id=end)
    items = []
    for row in out[:, start:].tolist():
        stop = row.index(end) + 1 if end in row else len(row)
        item = index.item_of(row[:stop])
        items.append(item if item is not None else -1)
    return items


def overlap_at_10(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(len(set(x[:10]) & set(y[:10])) / 10 for x, y in zip(a, b)) / len(a)


def timed_rank(recommender: Recommender, examples, k: int, beams: int | None = None) -> tuple[list[list[int]], float]:
    """The top-k item lists and the seconds they took, with ``beams`` beams (default: decode.num_beams)."""
    options = recommender.options if beams is None else dataclasses.replace(recommender.options, num_beams=beams)
    start = time.perf_counter()
    ranked = recommender.rank(examples, [set() for _ in examples], k, options).items
    return [[i for i, _ in r] for r in ranked], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="recipes/configs/ml100k/smollm2_lora.yaml")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--baseline-users", type=int, default=16)
    parser.add_argument("--exact-users", type=int, default=8, help="users for the exact reference (0: skip)")
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--adapter", default=None, help="adapter folder (default: the untuned base model)")
    parser.add_argument("--dtype", default="auto", help="the fast path's model.dtype")
    args = parser.parse_args()
    overrides = [f"data.max_history={args.history}", "decode.exclude_seen=false",
                 f"run.checkpoint={args.adapter or 'base'}", f"model.dtype={args.dtype}"]
    cfg = load_config(args.config, overrides)
    recommender, _ = Recommender.load(cfg)
    setup = recommender.setup
    users = evaluation_users(setup.split, args.users, cfg.run.seed)
    examples = [setup.split.example(u, "test", args.history) for u in users]
    n = min(args.baseline_users, len(examples))

    recommender.rank(examples[:2], [set(), set()], 20)  # warm-up
    fast, fast_s = timed_rank(recommender, examples, 20)
    fast10, fast10_s = timed_rank(recommender, examples, 10, beams=10)

    fp32 = load_config(args.config, overrides[:-1] + ["model.dtype=float32"])
    base = load_base_model(fp32.model, setup.model_path)
    if args.adapter:
        base = load_adapter(base, Path(args.adapter)).merge_and_unload()
    base.eval()
    trie = dict_trie(setup.index.sequences)
    naive = []
    start = time.perf_counter()
    for ex in examples[:n]:
        naive.append(naive_topk(base, setup.encoder.prompt_ids(ex), trie, setup.index))
    naive_s = time.perf_counter() - start

    # genrec's search at the naive path's settings (fp32, 10 beams): isolates the algorithm from bf16; run
    # on every user, it also measures the bf16 effect on more users than the naive path can afford
    fp32_recommender = Recommender(base, setup)
    same, _ = timed_rank(fp32_recommender, examples, 10, beams=10)
    returned = [i for r in fast for i in r]
    result = {
        "users": len(examples),
        "baseline_users": n,
        "history": args.history,
        "users_per_s": round(len(examples) / fast_s, 3),
        "users_per_s_same_width": round(len(examples) / fast10_s, 3),
        "baseline_users_per_s": round(n / naive_s, 4),
        "speedup": round((len(examples) / fast_s) / (n / naive_s), 2),
        "speedup_same_width": round((len(examples) / fast10_s) / (n / naive_s), 2),
        "topk_agreement": round(overlap_at_10(fast10[:n], naive), 4),
        "agreement_metric": "mean overlap@10 with the naive path's top-10, genrec at the same width (10 beams)",
        "default_width_agreement": round(overlap_at_10(fast[:n], naive), 4),
        "same_settings_agreement": round(overlap_at_10(same[:n], naive), 4),
        "same_settings_identical_lists": round(sum(a == b[:10] for a, b in zip(same, naive)) / n, 4),
        "dtype_agreement_all_users": round(overlap_at_10(fast10, same), 4),
        "valid_item_rate": sum(0 <= i < setup.index.num_items for i in returned) / len(returned),
        "naive_valid_item_rate": sum(i >= 0 for r in naive for i in r) / sum(len(r) for r in naive),
        "mean_prompt_tokens": round(sum(len(setup.encoder.prompt_ids(e)) for e in examples) / len(examples), 1),
        "adapter": args.adapter,
        "dtype": str(next(recommender.model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
    }
    if args.exact_users > 0:
        m = min(args.exact_users, n)
        # as many beams as items: only the exact bound (a prefix already below the 10th finished item) prunes
        exact, _ = timed_rank(fp32_recommender, examples[:m], 10, beams=setup.index.num_items)
        result.update({
            "exact_users": m,
            "exact_overlap_genrec_20_beams": round(overlap_at_10(fast[:m], exact), 4),
            "exact_overlap_genrec_10_beams": round(overlap_at_10(fast10[:m], exact), 4),
            "exact_overlap_naive": round(overlap_at_10(naive[:m], exact), 4),
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
