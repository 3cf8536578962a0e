"""How much averaging independently trained runs adds, for genrec and for SASRec alike.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ensembles.py [--root runs/quality] [--seeds 42 43 44]
        [--genrec-config recipes/configs/ml100k/smollm2_atomic.yaml] [--sasrec-config recipes/configs/ml100k/sasrec.yaml]

Loads what ``benchmarks/quality.py --genrec-config <genrec-config> --out <root>`` trained for each seed
(the genrec adapter in ``<root>/seed-<s>/genrec/adapter`` and SASRec in ``<root>/seed-<s>/sasrec/sasrec.pt``;
seeds not trained yet are trained first by that command), computes every
evaluation case's log-probability of every item once per run, and scores each run alone and every
combination of runs of the same system (mean log-probability, as ``train.ensemble`` ranks) on the
validation and test cases: the genrec config's split and seen-item rule (leave-one-out users, or every row of
a temporal / pre-split file), full ranking, the same metric code.
This is how the ensemble size of ``smollm2_atomic_ensemble.yaml`` was chosen (on validation), and it
gives SASRec the same treatment, so that an ensemble is compared with an ensemble.
With ``--sasrec-weights W ...`` it also scores each seed's genrec run times its own SASRec, ranked by
log p_LLM + w * log p_SASRec for each w: how ``decode.sasrec_weight`` is chosen (on validation). It reads any
folder of that layout, e.g. ``--root runs/public/beauty --genrec-config recipes/configs/beauty/smollm2_atomic.yaml
--sasrec-config recipes/configs/beauty/sasrec.yaml`` (what ``benchmarks/public.py`` trained), and the same
with ``office`` (rows instead of users).
Last line: {"users" (or "rows"): N, "genrec": {"valid": {"42": ndcg@10, "42+43": ..., ...}, "test": {...}}, "sasrec": {...},
"genrec+sasrec": {"valid": {"42 w=1.0": ...}, ...} (with --sasrec-weights)}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genrec.baselines import sasrec  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.data import load_split  # noqa: E402
from genrec.decoding.ensemble import item_log_probs  # noqa: E402
from genrec.decoding.search import top_k_unseen  # noqa: E402
from genrec.evaluation.protocol import score_cases  # noqa: E402
from genrec.model.loading import resolve_dtype  # noqa: E402
from genrec.recommender import Recommender  # noqa: E402
from genrec.runtime import make_accelerator, set_threads  # noqa: E402

SPLITS = ("valid", "test")


def genrec_log_probs(config: str, adapter: Path, overrides: list[str], sasrec_checkpoint: Path) -> dict[str, torch.Tensor]:
    """split -> [cases, items] log p(item | the case's prompt) for one adapter (member 0 if an ensemble), the LLM
    alone (never weighed with a SASRec). ``sasrec_checkpoint``: the seed's, for a recipe that reads one."""
    cfg = load_config(config, [f"run.checkpoint={adapter}", "decode.members=1", *overrides], check=False)
    if cfg.items.sasrec_checkpoint or cfg.decode.sasrec_weight:  # its item rows (or ranking) read this seed's SASRec
        overrides = [*overrides, f"items.sasrec_checkpoint={sasrec_checkpoint}"]
    cfg = load_config(config, [f"run.checkpoint={adapter}", "decode.members=1", *overrides])
    accelerator = make_accelerator(resolve_dtype(cfg.model.dtype))
    rec, _ = Recommender.load(cfg)
    with accelerator.autocast():  # as recipes/evaluate.py runs the model
        return {split_name: llm_log_probs(rec, split_name) for split_name in SPLITS}


def llm_log_probs(rec: Recommender, split_name: str) -> torch.Tensor:
    """[cases, items] on the CPU: the LLM's log p(item | prompt) for every case of ``split_name``, in
    ``split.cases`` order (member 0 of an ensemble; no SASRec and no decoding prior)."""
    setup, cfg = rec.setup, rec.setup.cfg
    cases = setup.split.cases(split_name)
    prompts = [setup.encoder.prompt_ids(setup.split.case_example(c, cfg.data.max_history)) for c in cases]
    order = sorted(range(len(cases)), key=lambda i: len(prompts[i]))  # little padding per batch
    logp = torch.empty(len(cases), setup.index.num_items)
    for lo in tqdm(range(0, len(order), cfg.decode.batch_users), desc=f"LLM log p, {split_name}", unit="batch"):
        rows = order[lo: lo + cfg.decode.batch_users]
        logp[rows] = item_log_probs(rec.next_logp, [prompts[i] for i in rows], setup.index,
                                    setup.tokenizer.pad_token_id).float().cpu()
    return logp


def sasrec_log_probs(config: str, checkpoint: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    split = load_split(load_config(config, overrides))
    model = sasrec.trained_model(checkpoint, split)  # with the settings it was trained with
    return {s: sasrec.log_probs(model, [split.case_example(c, model.max_len).history for c in split.cases(s)]).cpu()
            for s in SPLITS}


def ndcg_of(logp: torch.Tensor, split, split_name: str, exclude_seen: bool) -> dict[str, float]:
    """NDCG@10 and HR@10 of ranking every case of ``split_name`` by ``logp`` (rows in ``split.cases`` order)."""
    cases = split.cases(split_name)
    top = top_k_unseen(logp.clone(), [split.case_seen(c) if exclude_seen else set() for c in cases], 10)
    m = score_cases({c.case_id: t for c, t in zip(cases, top)}, split, cases, [10], bias=False)
    return {"ndcg@10": round(m["ndcg@10"], 4), "hit@10": round(m["hit@10"], 4)}


def combinations(runs: dict[int, dict[str, torch.Tensor]], split, seeds: list[int], exclude_seen: bool) -> dict:
    """split -> {"42": metrics, "42+43": metrics, ...}: every non-empty subset, mean log-probability."""
    out = {s: {} for s in SPLITS}
    for size in range(1, len(seeds) + 1):
        for subset in itertools.combinations(seeds, size):
            for s in SPLITS:
                mean = sum(runs[seed][s] for seed in subset) / len(subset)
                out[s]["+".join(map(str, subset))] = ndcg_of(mean, split, s, exclude_seen)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--genrec-config", default="recipes/configs/ml100k/smollm2_atomic.yaml")
    parser.add_argument("--sasrec-config", default="recipes/configs/ml100k/sasrec.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for both systems")
    parser.add_argument("--sasrec-weights", type=float, nargs="*", default=[],
                        help="also each seed's genrec x its SASRec, log p_LLM + w log p_SASRec, for each w")
    args = parser.parse_args()
    set_threads()
    root = Path(args.root)
    missing = [s for s in args.seeds if not ((root / f"seed-{s}" / "genrec" / "adapter" / "adapter_config.json").is_file()
                                             and (root / f"seed-{s}" / "sasrec" / "sasrec.pt").is_file())]
    if missing:  # train them the way quality.py does (single runs, not ensembles)
        cmd = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--seeds", *map(str, missing), "--out", str(root),
               "--genrec-config", args.genrec_config, "--sasrec-config", args.sasrec_config,
               *(["--set", *args.set] if args.set else [])]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    cfg = load_config(args.genrec_config, args.set, check=False)  # the data and seen-item rule; the runs are checked
    split = load_split(cfg)
    count = "users" if split.protocol == "leave_one_out" else "rows"
    result = {count: len(split.cases("test")), "seeds": args.seeds}
    checkpoints = {s: root / f"seed-{s}" / "sasrec" / "sasrec.pt" for s in args.seeds}
    llm = {s: genrec_log_probs(args.genrec_config, root / f"seed-{s}" / "genrec" / "adapter", args.set, checkpoints[s])
           for s in args.seeds}
    sas = {s: sasrec_log_probs(args.sasrec_config, checkpoints[s], args.set) for s in args.seeds}
    for name, runs in (("genrec", llm), ("sasrec", sas)):
        result[name] = combinations(runs, split, args.seeds, cfg.decode.exclude_seen)
        for s in SPLITS:
            print(f"{name:7s} {s:5s} " + "  ".join(f"{k}: {v['ndcg@10']:.4f}" for k, v in result[name][s].items()),
                  flush=True)
    if args.sasrec_weights:
        result["genrec+sasrec"] = {s: {f"{seed} w={w}": ndcg_of(llm[seed][s] + w * sas[seed][s], split, s,
                                                                                   cfg.decode.exclude_seen)
                                       for seed in args.seeds for w in args.sasrec_weights} for s in SPLITS}
        for s in SPLITS:
            print(f"genrec+sasrec {s:5s} " + "  ".join(f"{k}: {v['ndcg@10']:.4f}"
                                                      for k, v in result["genrec+sasrec"][s].items()), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
