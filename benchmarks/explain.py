"""Explained recommendations on ml-100k: grounding, necessity and text quality of explanations.

    .venv/bin/python benchmarks/explain.py --headline [--config recipes/configs/ml100k/smollm2_atomic.yaml]
        [--adapter runs/demo/tuned/adapter] [--users 200] [--out runs/explain_headline]
    .venv/bin/python benchmarks/explain.py [--config recipes/configs/ml100k/smollm2_explain.yaml]
        [--users 200] [--seed 42] [--retrain] [--out runs/explain] [--set KEY=VALUE ...]

``--headline --compare-fallback-sets 0 1 2``: only the explained top-10's latency and USR for each
``explain.fallback_sets`` value, on the same ``--users`` users, the settings interleaved user by user so
that a busy host slows them alike (compare the ratios). Last line: one row per value.

``--headline`` (what `genrec serve` and `recommend.py explain=true` do): the headline recipe recommends,
and every item of its top-10 is explained (genrec.explain.top_k) for a seeded sample of ``--users`` test
users. Its ranking, one user per request as the explained path ranks, is scored on every test user
(``ndcg@10``) beside recipes/evaluate.py's batched figure (``headline_ndcg@10``, which it also runs), with
``distinct_top1`` and ``coverage@10``; the explanations are scored like the rows below; ``latency_s``
times each request: top-10 alone for every test user, explained top-10 for the sampled ones. The last
line keeps the keys of the recipe mode.

Without ``--headline``, the E2 recipe (recommend, then explain) beside two baselines that need no model:

The recipe is trained by recipes/finetune.py into ``<out>/model`` (or loaded from there). For a seeded
sample of ``--users`` test users (every user when 0), each with its test-time history:

- ``e2_grounded`` / ``e2_free``: the model's top-1 item under the trie, then its explanation, chosen among
  the true statements the evidence supports (explain.decoding=grounded) or written greedily (free);
- ``e1_grounded`` / ``e1_free``: the same model explaining the user's real test item (task E1);
- ``oracle``: the rule-based reference explanation of the recommended item (genrec.explain.statements);
- ``generic``: a non-personalised template: the recommended item's genre and year, the same for every user.

Every row is scored by genrec.explain.verify (item- and history-grounding precision, hallucinated-title
rate: claims parsed from the text and checked against the data), genrec.explain.necessity (removing the cited
history items vs as many random ones, re-scoring the explained item with the model by teacher forcing)
and genrec.explain.metrics against the reference explanation of the same (user, item): BLEU-1/4,
ROUGE-1/2/L, USR, FMR, FCR, DIV. Generated rows are written as (user, item, rating, feature,
explanation) records to ``<out>/explanations.jsonl``.
Last line: JSON with the headline E2 row (explain.decoding of the config) at the top level —
``item_grounding_precision``, ``history_grounding_precision``, ``hallucinated_title_rate``,
``necessity_vs_random``, ``bleu4``, ``rougeL``, ``usr``, ``fmr``, ... — and every row under ``rows``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import recipe, trained  # noqa: E402  (the same train-or-load helpers)

from genrec.config import load_config  # noqa: E402
from genrec.evaluation.protocol import evaluation_users  # noqa: E402
from genrec.explain.metrics import text_metrics  # noqa: E402
from genrec.explain.necessity import necessity  # noqa: E402
from genrec.explain.verify import ExplanationVerifier, grounding_metrics  # noqa: E402
from genrec.io import atomic_write_text  # noqa: E402
from genrec.model.loading import resolve_dtype  # noqa: E402
from genrec.recommender import Recommender  # noqa: E402
from genrec.runtime import make_accelerator, set_threads  # noqa: E402


def score_row(recommender, verifier, examples, items, texts, seed, cache: dict) -> dict:
    """Grounding, necessity and text metrics of ``texts`` (explaining ``items[i]`` to ``examples[i]``)."""
    explainer = recommender.setup.explainer
    evidence = [explainer.evidence.build(ex.user_id, ex.history, item) for ex, item in zip(examples, items)]
    references = [(explainer.oracle(ev) or None) for ev in evidence]
    verdicts = [verifier.verify(t, ex.user_id, ex.history, item) for t, ex, item in zip(texts, examples, items)]
    row = grounding_metrics(verdicts)
    row.update(necessity(recommender, [(ex, item, v.cited) for ex, item, v in zip(examples, items, verdicts)], seed,
                         cache))
    row.update(text_metrics(list(texts), [r.text if r else "" for r in references], [ev.feature for ev in evidence],
                            verifier.vocabulary))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def explain_headline(args) -> dict:
    """The headline recipe's own top-10, explained (see the module docstring)."""
    import statistics

    import torch
    from tqdm.auto import tqdm

    from genrec.evaluation.protocol import score
    from genrec.explain.top_k import RankingExplainer

    config = args.config or "recipes/configs/ml100k/smollm2_atomic.yaml"
    folder = Path(args.out) / "model"
    overrides = [f"run.output_dir={folder}", f"run.seed={args.seed}", *args.set]
    seconds = 0.0
    if args.adapter:
        overrides.append(f"run.checkpoint={args.adapter}")
    else:
        seconds = trained(folder, args.retrain, lambda: recipe("finetune", config, overrides))
    cfg = load_config(config, overrides)
    recommender, checkpoint = Recommender.load(cfg)
    setup, split = recommender.setup, recommender.setup.split
    autocast = make_accelerator(resolve_dtype(cfg.model.dtype)).autocast
    everyone = evaluation_users(split, None, args.seed)
    # the explained path (genrec serve, recommend.py) ranks one user per request: rank every test user that
    # way, timing each; in bf16 a user's scores may differ in the last bits from a batched evaluation, so
    # the batched recipes/evaluate.py figure is reported beside it (headline_ndcg@10)
    ranked, plain_s = {}, []
    with autocast():
        for user in tqdm(everyone, desc="ranking one user at a time", unit="user"):
            ex = split.example(user, "test", cfg.data.max_history)
            start = time.perf_counter()
            ranked[user] = recommender.rank([ex], [split.seen(user, "test")], 10).items[0]
            plain_s.append(time.perf_counter() - start)
    ranking = score(ranked, split, everyone, "test", [10], bias=False)
    evaluated = recipe_evaluate(config, [*overrides, f"run.checkpoint={checkpoint}"], Path(args.out) / "evaluate")
    top1 = [ranked[u][0][0] for u in everyone]

    users = evaluation_users(split, args.users or None, args.seed)
    examples = [split.example(u, "test", cfg.data.max_history) for u in users]
    explainer, verifier = RankingExplainer(recommender), ExplanationVerifier(setup.explainer.evidence)
    pairs, texts, records, explained_s = [], [], [], []
    with autocast():
        for ex, user in tqdm(list(zip(examples, users)), desc="explaining top-10", unit="user"):
            start = time.perf_counter()
            explained = explainer(ex, recommender.rank([ex], [split.seen(user, "test")], 10).items[0])
            explained_s.append(time.perf_counter() - start)  # rank + explain, as a request does
            for e in explained:
                pairs.append((ex, e.item))
                texts.append(e.explanation)
                records.append({"user": user, "item": split.catalog[e.item].item_id,
                                "title": split.catalog[e.item].text, "explanation": e.explanation,
                                "claims": len(e.claims), "claims_true": e.claims_true})
        atomic_write_text(Path(args.out) / "explanations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        row = score_row(recommender, verifier, [p[0] for p in pairs], [p[1] for p in pairs], texts, args.seed, {})
    return {"mode": "headline", "users": len(users), "explained_items": len(pairs),
            "explained_share": round(sum(bool(t) for t in texts) / len(texts), 4), **row,
            "ndcg@10": round(ranking["ndcg@10"], 4), "hit@10": round(ranking["hit@10"], 4),
            "headline_ndcg@10": round(evaluated["metrics"]["ndcg@10"], 4), "ranking_users": len(everyone),
            "coverage@10": round(ranking["coverage@10"], 4), "distinct_top1": len(set(top1)),
            "latency_s": {"explained_top10_p50": round(statistics.median(explained_s), 3),
                          "explained_top10_p95": round(percentile(explained_s, 0.95), 3),
                          "top10_p50": round(statistics.median(plain_s), 3),
                          "top10_p95": round(percentile(plain_s, 0.95), 3), "users": len(explained_s),
                          "top10_users": len(plain_s),
                          "threads": torch.get_num_threads()},
            "adapter": str(checkpoint), "config": config, "train_minutes": round(seconds / 60, 2), "seed": args.seed}


def compare_fallback_sets(args) -> dict:
    """Explained top-10 latency and USR per explain.fallback_sets value, interleaved per user."""
    import statistics

    import torch

    from genrec.explain.metrics import unique_sentence_ratio
    from genrec.explain.top_k import RankingExplainer

    cfg = load_config(args.config or "recipes/configs/ml100k/smollm2_atomic.yaml",
                      [f"run.checkpoint={args.adapter}", *args.set] if args.adapter else args.set)
    recommender, checkpoint = Recommender.load(cfg)
    split = recommender.setup.split
    autocast = make_accelerator(resolve_dtype(cfg.model.dtype)).autocast
    explainers = {n: RankingExplainer(recommender, n) for n in args.compare_fallback_sets}
    seconds = {n: [] for n in explainers}
    lines = {n: [] for n in explainers}
    with autocast():
        for user in evaluation_users(split, args.users or None, args.seed):
            ex = split.example(user, "test", cfg.data.max_history)
            for n, explainer in explainers.items():
                start = time.perf_counter()
                explained = explainer(ex, recommender.rank([ex], [split.seen(user, "test")], 10).items[0])
                seconds[n].append(time.perf_counter() - start)  # rank + explain, as a request does
                lines[n] += [e.explanation for e in explained]
    return {"mode": "compare_fallback_sets", "users": len(seconds[args.compare_fallback_sets[0]]),
            "adapter": str(checkpoint), "threads": torch.get_num_threads(),
            "rows": {str(n): {"explained_top10_p50": round(statistics.median(s), 3),
                              "explained_top10_p95": round(percentile(s, 0.95), 3),
                              "usr": round(unique_sentence_ratio(lines[n]), 4)} for n, s in seconds.items()}}


def recipe_evaluate(config: str, overrides: list[str], out: Path) -> dict:
    """recipes/evaluate.py on every test user, as a user runs it (its own process)."""
    recipe("evaluate", config, [*overrides, f"run.output_dir={out}"])
    return json.loads((out / "eval_results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--headline", action="store_true", help="explain the headline recipe's own top-10")
    parser.add_argument("--adapter", help="--headline: the headline adapter to load instead of training one")
    parser.add_argument("--config", default=None, help="default: smollm2_atomic.yaml with --headline, else "
                                                       "smollm2_explain.yaml")
    parser.add_argument("--users", type=int, default=200, help="seeded sample of test users (0 = all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--out", default="runs/explain")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--compare-fallback-sets", type=int, nargs="+", metavar="N",
                        help="--headline: only the explained top-10's latency and USR per explain.fallback_sets value")
    args = parser.parse_args()
    set_threads()
    if args.headline and args.compare_fallback_sets:
        print(json.dumps(compare_fallback_sets(args)))
        return
    if args.headline:
        args.out = args.out if args.out != "runs/explain" else "runs/explain_headline"
        print(json.dumps(explain_headline(args)))
        return
    args.config = args.config or "recipes/configs/ml100k/smollm2_explain.yaml"
    folder = Path(args.out) / "model"
    overrides = [f"run.output_dir={folder}", f"run.seed={args.seed}", *args.set]
    seconds = trained(folder, args.retrain, lambda: recipe("finetune", args.config, overrides))
    cfg = load_config(args.config, overrides)
    recommender, _ = Recommender.load(cfg)
    setup = recommender.setup
    split = setup.split
    users = evaluation_users(split, args.users or None, args.seed)
    examples = [split.example(u, "test", cfg.data.max_history) for u in users]
    verifier = ExplanationVerifier(setup.explainer.evidence)
    autocast = make_accelerator(resolve_dtype(cfg.model.dtype)).autocast
    rows, texts, timing = {}, {}, {}
    with autocast():
        start = time.perf_counter()
        ranked = recommender.rank(examples, [split.seen(u, "test") for u in users], 1, progress=True).items
        top1 = [r[0][0] for r in ranked]
        timing["recommend_s"] = round(time.perf_counter() - start, 1)
        targets = [ex.target for ex in examples]
        for task, items in (("e2", top1), ("e1", targets)):
            for decoding in ("grounded", "free"):
                start = time.perf_counter()
                texts[f"{task}_{decoding}"] = recommender.explain(examples, items, decoding, progress=True)
                timing[f"{task}_{decoding}_s"] = round(time.perf_counter() - start, 1)
        explainer = setup.explainer
        evidence = [explainer.evidence.build(ex.user_id, ex.history, i) for ex, i in zip(examples, top1)]
        texts["oracle"] = [(explainer.oracle(ev).text if explainer.oracle(ev) else "") for ev in evidence]
        texts["generic"] = [(explainer.generic(ev).text if explainer.generic(ev) else "") for ev in evidence]
        cache: dict = {}  # item scores under each (reduced) history, shared by the rows
        for name, generated in texts.items():
            items = targets if name.startswith("e1") else top1
            rows[name] = score_row(recommender, verifier, examples, items, generated, args.seed, cache)
            print(name, json.dumps(rows[name]), flush=True)
    records = []
    for name in ("e2_grounded", "e2_free"):
        for ex, item, ev, text, ref in zip(examples, top1, evidence, texts[name], texts["oracle"]):
            records.append({"row": name, "user": ex.user_id, "item": split.catalog[item].item_id,
                            "title": split.catalog[item].text, "rating": ev.rating, "feature": ev.feature,
                            "explanation": text, "reference": ref})
    atomic_write_text(Path(args.out) / "explanations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    headline = f"e2_{cfg.explain.decoding}"
    result = {"users": len(users), "decoding": cfg.explain.decoding, **rows[headline], "rows": rows,
              "train_minutes": round(seconds / 60, 2), "seconds": timing, "config": args.config, "seed": args.seed}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
