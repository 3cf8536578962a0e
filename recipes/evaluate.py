"""Evaluate a tuned (or untuned) model under the fixed protocol; writes eval_results.json.

    python recipes/evaluate.py --config recipes/configs/ml100k/smollm2_lora.yaml
    accelerate launch --multi_gpu --num_processes 4 recipes/evaluate.py --config ...  # users sharded over 4 GPUs
    torchrun --nproc_per_node 2 recipes/evaluate.py --config ...                      # ... over 2 CPU processes
    python recipes/evaluate.py --config ... run.checkpoint=base eval.users=100 run.output_dir=runs/base

Full ranking over the whole catalog by trie-constrained beam search, seen items
excluded (decode.exclude_seen), HR/NDCG/MRR@{1,5,10,20} (eval.ks), valid-item/duplicate rate,
coverage@10, and the configured baselines scored by the same code on the same cases. Leave-one-out
evaluates one case per user; data.split=temporal|files one per validation/test row (rankings.jsonl
gets a line per row, with its case_id, and metrics average over rows).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.baselines.popularity import baseline_metrics
from genrec.causal.rationale import RationaleBuilder, rationale_metrics
from genrec.config import load_config, parse_cli
from genrec.errors import ConfigError
from genrec.evaluation.protocol import evaluation_cases, period_start, protocol, rank_cases, rankings_jsonl, score_cases
from genrec.evaluation.stream import RankingStream, folder_state, run_fingerprint
from genrec.io import atomic_write_text
from genrec.model.loading import resolve_dtype
from genrec.paradigms.pointwise import evaluation_examples, rating_baselines, roc_auc, sharded_scores
from genrec.recommender import Recommender
from genrec.runtime import make_accelerator, peak_rss_mb, run, set_threads, setup_logging

log = logging.getLogger("genrec")


def evaluate_pointwise(cfg, accelerator, recommender, users: list[str], checkpoint) -> dict:
    """Pointwise templates: AUC of log p(yes) - log p(no) over the users' held-out rated interactions."""
    setup, split = recommender.setup, recommender.setup.split
    asked = evaluation_examples(split, users, cfg.eval.split, cfg.data.max_history, cfg.data.like_threshold)
    start = time.time()
    scores = sharded_scores(accelerator, recommender.model, setup.encoder, asked, cfg.decode.batch_users)
    elapsed = time.time() - start
    if not accelerator.is_main_process:
        return {}
    labels = [bool(ex.label) for ex in asked]
    results = {
        "metrics": {"auc": roc_auc(scores, labels), "examples": len(asked), "like_rate": sum(labels) / len(labels),
                    "accuracy@0": sum((s > 0) == y for s, y in zip(scores, labels)) / len(labels)},
        "protocol": {
            "task": "pointwise: will the user like the held-out item? (yes/no)",
            "split": f"leave-one-out ({cfg.eval.split}), time-ordered; the held-out item is the candidate",
            "label": f"rating > data.like_threshold={cfg.data.like_threshold}",
            "score": f"log p({setup.template.answers[0]!r}) - log p({setup.template.answers[1]!r}), first token",
            "users": len(users), "examples": len(asked), "max_history": cfg.data.max_history,
            "training_examples": cfg.train.examples, "model": cfg.model.name_or_path,
            "adapter": str(checkpoint) if checkpoint else None, "template": setup.template.source,
            "template_sha256": setup.template.sha256, "dataset": cfg.data.dataset, "seed": cfg.run.seed,
            "processes": accelerator.num_processes, "threads": torch.get_num_threads(),
        },
        # the same examples scored without a model, from the training ratings (AUC)
        "baselines": rating_baselines(split, asked),
        "timing": {"seconds": round(elapsed, 1), "examples_per_s": round(len(asked) / max(elapsed, 1e-9), 3)},
    }
    out = Path(cfg.run.output_dir)
    atomic_write_text(out / "eval_results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "scores.jsonl", "".join(
        json.dumps({"user_id": ex.user_id, "item_id": split.catalog[ex.target].item_id, "label": ex.label,
                    "score": round(sc, 5)}) + "\n" for ex, sc in zip(asked, scores)))
    m = results["metrics"]
    log.info("%s on %d %s interactions: AUC %.4f (like rate %.3f)", "base model" if checkpoint is None else checkpoint,
             len(asked), cfg.eval.split, m["auc"], m["like_rate"])
    return results


def main(argv: list[str]) -> dict:
    cfg = load_config(*parse_cli(argv))
    set_threads()
    accelerator = make_accelerator(resolve_dtype(cfg.model.dtype), cfg.model.tf32)
    setup_logging(accelerator.is_main_process)
    torch.manual_seed(cfg.run.seed)

    recommender, checkpoint = Recommender.load(cfg, device=accelerator.device)
    split = recommender.setup.split
    cases = evaluation_cases(split, cfg.eval.users, cfg.run.seed, period_start(cfg), cfg.eval.split)
    if recommender.setup.template.answers:
        if split.protocol != "leave_one_out":
            raise ConfigError(f"{recommender.setup.template.source} is pointwise: it is evaluated on each user's "
                              f"held-out interaction (leave-one-out), not on data.split={split.protocol} rows")
        return evaluate_pointwise(cfg, accelerator, recommender, [c.user_id for c in cases], checkpoint)
    k = max(cfg.eval.ks)
    out = Path(cfg.run.output_dir)
    # rankings go to disk batch by batch; a killed run started again with the same checkpoint and settings
    # ranks only what is missing
    stream = RankingStream(out, "rankings", run_fingerprint(
        checkpoint=str(checkpoint), weights=folder_state(checkpoint), encoder=recommender.setup.encoder.fingerprint(),
        options=recommender.options, members=len(recommender.members), k=k, split=cfg.eval.split,
        dtype=str(resolve_dtype(cfg.model.dtype)), cases=[c.case_id for c in cases]), accelerator.process_index)
    start = time.time()
    stream.load()
    accelerator.wait_for_everyone()  # every process has read the partial files before any process writes its own
    why = {}
    with accelerator.autocast():
        mine = rank_cases(recommender, cases, cfg.eval.split, k, accelerator.process_index,
                          accelerator.num_processes, progress=accelerator.is_main_process, rationales=why,
                          stream=stream)
    elapsed = time.time() - start
    ranked_now = len(cases) - stream.resumed
    rankings, rationales = {}, {}
    for part, part_why in accelerator.gather_for_metrics([(mine, why)], use_gather_object=True):
        rankings.update(part)
        rationales.update(part_why)
    if not accelerator.is_main_process:
        return {}

    metrics = score_cases(rankings, split, cases, cfg.eval.ks, ips_clip=cfg.eval.ips_clip, seed=cfg.run.seed)
    if rationales:  # reason-then-recommend: how the written rationales relate to history and recommendations
        setup = recommender.setup
        reference = setup.with_rationales([split.case_example(c, cfg.data.max_history) for c in cases])
        metrics.update(rationale_metrics([[i for i, _ in rankings[c.case_id]] for c in cases],
                                         [rationales[c.case_id] for c in cases],
                                         [ex.rationale for ex in reference], RationaleBuilder(split, cfg.reason)))
    per = "users_per_s" if split.protocol == "leave_one_out" else "rows_per_s"
    results = {
        "metrics": metrics,
        "protocol": protocol(
            cfg, split, cases, cfg.eval.split,
            model=cfg.model.name_or_path, model_path=str(recommender.setup.model_path),
            adapter=str(checkpoint) if checkpoint else None, adapter_members=len(recommender.members),
            quantization=cfg.model.quantization,
            dtype=str(resolve_dtype(cfg.model.dtype)).replace("torch.", ""),
            template=recommender.setup.template.source, template_sha256=recommender.setup.template.sha256,
            processes=accelerator.num_processes, threads=torch.get_num_threads(),
            device=str(next(recommender.model.parameters()).device),
            attn_implementation=cfg.model.attn_implementation,
        ),
        "baselines": baseline_metrics(cfg, split, cases, cfg.eval.split),
        # peak resident memory of this (main) process over the whole run: model, split and every ranking held
        # seconds and speed of the cases ranked by this run (a resumed run took ``resumed`` from disk)
        "timing": {"seconds": round(elapsed, 1), per: round(ranked_now / max(elapsed, 1e-9), 3),
                   "resumed": stream.resumed, "peak_rss_mb": round(peak_rss_mb(), 1)},
    }
    atomic_write_text(out / "eval_results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "rankings.jsonl", rankings_jsonl(split, cases, rankings, rationales))
    stream.remove_all()
    m, unit = results["metrics"], per.split("_")[0]
    at = 10 if 10 in cfg.eval.ks else max(cfg.eval.ks)
    log.info("%s on %d %s: HR@%d %.4f  NDCG@%d %.4f  MRR@%d %.4f  valid %.3f  dup %.3f  (%.2f %s/s)",
             "base model" if checkpoint is None else checkpoint, len(cases), unit, at, m[f"hit@{at}"], at,
             m[f"ndcg@{at}"], at, m[f"mrr@{at}"], m["valid_item_rate"], m["duplicate_rate"], results["timing"][per],
             unit)
    log.info("results written to %s", out / "eval_results.json")
    return results


if __name__ == "__main__":
    sys.exit(run(main))
