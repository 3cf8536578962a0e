"""Train the SASRec baseline and evaluate it under the fixed protocol; writes eval_results.json.

    OMP_NUM_THREADS=1 python recipes/sasrec.py --config recipes/configs/ml100k/sasrec.yaml
    python recipes/sasrec.py --config recipes/configs/ml100k/smollm2_lora.yaml run.output_dir=runs/ml100k/sasrec
    python recipes/sasrec.py --config ... sasrec.retrain=false        # rank again with the saved sasrec.pt

Same split (data.split), same seen-item rule (decode.exclude_seen), same cases (eval.users, run.seed),
same metric code and the same popularity baseline as recipes/evaluate.py, so the
rows of `genrec results` compare like with like. Early stopping uses validation
NDCG@10 only; the test split is never looked at while training. The LLM (and its
tokenizer) is not loaded. Writes into run.output_dir: sasrec.pt, eval_results.json,
rankings.jsonl.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.baselines import sasrec
from genrec.baselines.popularity import baseline_metrics
from genrec.config import load_config, parse_cli
from genrec.data import load_split
from genrec.evaluation.protocol import evaluation_cases, period_start, protocol, rankings_jsonl, score_cases
from genrec.io import atomic_write_text
from genrec.runtime import run, set_threads, setup_logging

log = logging.getLogger("genrec")


def main(argv: list[str]) -> dict:
    cfg = load_config(*parse_cli(argv))
    set_threads()
    setup_logging()
    p, out = cfg.sasrec, Path(cfg.run.output_dir)
    checkpoint = out / "sasrec.pt"
    split = load_split(cfg)  # not recommender.prepare(): that loads the LLM's tokenizer, which SASRec doesn't need

    if not p.retrain and checkpoint.is_file():
        model, fit = sasrec.load(checkpoint, p, split, cfg.run.seed)
        log.info("sasrec: reusing %s (trained %d epochs, best validation NDCG@10 %.4f at epoch %d)",
                 checkpoint, fit.epochs, fit.best_valid_ndcg10, fit.best_epoch)
        reused = True
    else:
        if not p.retrain:
            log.info("sasrec: no %s to reuse; training", checkpoint)
        model, fit = sasrec.train(split, p, cfg.run.seed, cfg.decode.exclude_seen)
        sasrec.save(checkpoint, model, p, split, cfg.run.seed, fit)
        reused = False

    # the selected model on every validation case (the early-stopping number, plus HR and MRR)
    valid_cases = split.cases("valid")
    valid = score_cases(sasrec.rank_cases(model, split, valid_cases, 10, cfg.decode.exclude_seen, p.eval_batch),
                        split, valid_cases, [10])
    cases = evaluation_cases(split, cfg.eval.users, cfg.run.seed, period_start(cfg), cfg.eval.split)
    start = time.time()
    rankings = sasrec.rank_cases(model, split, cases, max(cfg.eval.ks), cfg.decode.exclude_seen, p.eval_batch)
    elapsed = time.time() - start
    loo = split.protocol == "leave_one_out"
    unit = "users" if loo else "rows"
    results = {
        "metrics": score_cases(rankings, split, cases, cfg.eval.ks, ips_clip=cfg.eval.ips_clip, seed=cfg.run.seed),
        "protocol": protocol(
            cfg, split, cases, cfg.eval.split,
            max_history=p.max_len, identifier="catalog index",
            decoding={"method": "full-catalog scores (last hidden state x item embeddings)", "batch_users": p.eval_batch},
            model="SASRec", sasrec=sasrec.model_settings(p), checkpoint=str(checkpoint), adapter=None,
            epochs_trained=fit.epochs, best_epoch=fit.best_epoch, best_valid_ndcg10=round(fit.best_valid_ndcg10, 6),
            validation={unit: len(valid_cases), **{m: round(valid[m], 6) for m in ("hit@10", "ndcg@10", "mrr@10")}},
            early_stopping=f"validation NDCG@10, patience {p.patience} epochs, best weights kept",
            threads=torch.get_num_threads(),
        ),
        "baselines": baseline_metrics(cfg, split, cases, cfg.eval.split),
        "timing": {"train_seconds": round(fit.seconds, 1), "epochs": fit.epochs, "reused_checkpoint": reused,
                   "rank_seconds": round(elapsed, 2), f"{unit}_per_s": round(len(cases) / max(elapsed, 1e-9), 1)},
    }
    atomic_write_text(out / "eval_results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "rankings.jsonl", rankings_jsonl(split, cases, rankings))
    log.info("SASRec validation (%d %s): HR@10 %.4f  NDCG@10 %.4f  MRR@10 %.4f",
             len(valid_cases), unit, valid["hit@10"], valid["ndcg@10"], valid["mrr@10"])
    m = results["metrics"]
    at = 10 if 10 in cfg.eval.ks else max(cfg.eval.ks)
    log.info("SASRec on %d %s (%s): HR@%d %.4f  NDCG@%d %.4f  MRR@%d %.4f  valid %.3f  dup %.3f",
             len(cases), unit, cfg.eval.split, at, m[f"hit@{at}"], at, m[f"ndcg@{at}"], at, m[f"mrr@{at}"],
             m["valid_item_rate"], m["duplicate_rate"])
    log.info("results written to %s", out / "eval_results.json")
    return results


if __name__ == "__main__":
    sys.exit(run(main))
