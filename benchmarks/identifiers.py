"""Item identifiers on ml-100k: titles vs atomic ids vs semantic ids, same model, data and budget.

    .venv/bin/python benchmarks/identifiers.py [--kinds title atomic semantic collaborative id sequential] [--epochs 1]
        [--out runs/identifiers] [--retrain] [--set KEY=VALUE ...]

Every kind is trained by recipes/finetune.py from the same base recipe
(recipes/configs/ml100k/smollm2_atomic.yaml: LoRA r16 on every projection, lr 2e-3, batch 16,
cosine, the sequence objective over the same whole-history windows, so every training interaction
is a target once per epoch) for the same number of epochs; only what an item is changes:

- ``title``: its title, tokenized on its own and ended by the end token (prompts/next_item_title_sequence.yaml);
- ``atomic``: one new token per item, initialised from its title (prompts/next_item_atomic.yaml);
- ``semantic``: 3 residual k-means codes of the MiniLM embedding of title + genres, plus a collision
  rank (prompts/next_item_semantic.yaml, items.* as in smollm2_semantic.yaml); each code position's
  softmax runs over the codes of its level, and decoding renormalises each step over the trie node's
  children (decode.trie_normalize=true);
- ``collaborative``: the same codes made from the items' training interactions (SVD item factors of
  the user × item matrix) instead of their text;
- ``id`` / ``sequential``: the plain id ("item_1", digits tokenized) + the end token, numbered as in the
  data or by first appearance in the users' training sequences (items.id_order=sequential, OpenP5's
  sequential indexing).

Each is then evaluated by recipes/evaluate.py on every test user (leave-one-out, full ranking over
the catalog, seen items excluded, trie-constrained beam search with 20 beams). Outputs go to
``<out>/<kind>/``; a kind trained before is loaded from there (``--retrain`` trains again).
Last line: one JSON object keyed by kind with ndcg@10, hit@10, decode users_per_s (evaluate's own
timing of the ranking loop), tokens_per_item (mean length of an item's token sequence in the trie,
end token included) and train_minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import recipe, trained  # noqa: E402  (the same train-or-load helpers)

BASE = "recipes/configs/ml100k/smollm2_atomic.yaml"
KINDS = {
    "title": ["items.identifier=title", "prompt.template=prompts/next_item_title_sequence.yaml",
              # ~10 tokens per title: a quarter of the rows per step, four steps per update (the same batch of 16),
              # so the full-vocabulary logits of 1,000-token windows fit in memory
              "train.max_length=2048", "train.batch_size=4", "train.grad_accum=4", "decode.batch_users=16"],
    "atomic": [],
    "semantic": ["items.identifier=semantic", "prompt.template=prompts/next_item_semantic.yaml",
                 "items.semantic_source=minilm", "items.semantic_text={movie_title} ({release_year}); genres: {class}",
                 "items.semantic_levels=3", "items.semantic_codebook=32", "decode.trie_normalize=true"],
    # plain ids ("item_1" + the end token, a few digit tokens each), numbered as in the data or by first
    # appearance in the users' training sequences (OpenP5's sequential indexing: co-watched items share digits)
    "id": ["items.identifier=id", "prompt.template=prompts/next_item_title_sequence.yaml", "train.max_length=2048",
           "train.batch_size=4", "train.grad_accum=4", "decode.batch_users=16"],
    "sequential": ["items.identifier=id", "items.id_order=sequential", "prompt.template=prompts/next_item_title_sequence.yaml",
                   "train.max_length=2048", "train.batch_size=4", "train.grad_accum=4", "decode.batch_users=16"],
    # semantic ids from the training interactions instead of the text (OpenP5's collaborative indexing in spirit)
    "collaborative": ["items.identifier=semantic", "prompt.template=prompts/next_item_semantic.yaml",
                      "items.semantic_source=collaborative", "items.semantic_levels=3", "items.semantic_codebook=32",
                      "decode.trie_normalize=true"],
}


def tokens_per_item(overrides: list[str]) -> float:
    from genrec.config import load_config
    from genrec.recommender import prepare

    index = prepare(load_config(BASE, overrides)).index
    return round(statistics.fmean(index.item_length.tolist()), 2)


def run_kind(kind: str, args) -> dict:
    folder = Path(args.out) / kind
    overrides = [f"run.output_dir={folder}", f"train.epochs={args.epochs}", "eval.users=null", *KINDS[kind], *args.set]
    seconds = trained(folder, args.retrain, lambda: recipe("finetune", BASE, overrides))
    if args.retrain or not (folder / "eval_results.json").is_file():
        recipe("evaluate", BASE, overrides)
    results = json.loads((folder / "eval_results.json").read_text())
    m = results["metrics"]
    return {"ndcg@10": round(m["ndcg@10"], 4), "hit@10": round(m["hit@10"], 4),
            "valid_item_rate": m["valid_item_rate"], "users": results["protocol"]["users"],
            "users_per_s": round(results["timing"]["users_per_s"], 2),
            "tokens_per_item": tokens_per_item(overrides), "train_minutes": round(seconds / 60, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--epochs", type=float, default=1.0, help="the training budget of every kind")
    parser.add_argument("--out", default="runs/identifiers")
    parser.add_argument("--retrain", action="store_true", help="train again even where outputs exist")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every kind")
    args = parser.parse_args()
    result = {}
    for kind in args.kinds:
        result[kind] = run_kind(kind, args)
        print(f"{kind}: {json.dumps(result[kind])}", flush=True)
    result["budget"] = {"epochs": args.epochs, "base_config": BASE, "overrides": args.set}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
