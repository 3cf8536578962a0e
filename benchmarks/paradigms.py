"""Training paradigms on ml-100k: pointwise yes/no, contrastive preference tuning, multi-task, incremental update.

    .venv/bin/python benchmarks/paradigms.py [--parts pointwise contrastive multitask incremental]
        [--shots 16 64 256] [--epochs 1] [--out runs/paradigms] [--retrain] [--set KEY=VALUE ...]

Every run is recipes/finetune.py + recipes/evaluate.py on a shipped config; a run trained before is
loaded from ``<out>/<name>/`` (``--retrain`` trains again). Parts:

- ``pointwise`` (recipes/configs/ml100k/smollm2_pointwise.yaml, TALLRec style): few-shot training on a
  balanced seeded sample of ``--shots`` rated training interactions each (like = rating > 3), evaluated by
  AUC of log p(Yes) - log p(No) on every user's held-out test interaction; the untuned model (zero-shot)
  too. ``pointwise.auc`` is the largest shot count's.
- ``contrastive`` (smollm2_atomic.yaml and smollm2_atomic_sdpo.yaml): an SFT adapter trained ``--epochs``
  (``sft_init``), then the same budget spent two ways from it: ``--epochs`` more of cross-entropy (``sft``)
  or of softmax-DPO against the frozen ``sft_init`` weights (``contrastive``). NDCG@10 on all test users.
- ``multitask`` (smollm2_atomic_multitask.yaml): next-item, masked-item and title→item examples mixed,
  trained from scratch for 2 × ``--epochs``: compare with ``sft`` (2 × ``--epochs`` of next-item only).
- ``incremental`` (smollm2_atomic_incremental.yaml, data.time_cut 1998-01-01): ``stale`` = trained
  ``--epochs`` on the interactions before the cut; ``incremental`` = ``stale`` continued ``--epochs`` on
  the interactions after it; ``retrained`` = trained from scratch on all of them. NDCG@10 on the newer
  period: the test users whose test interaction is at or after the cut.

Last line: one JSON object with ``pointwise`` (``auc``), ``sft`` / ``contrastive`` / ``multitask``
(``ndcg@10``), ``stale`` / ``incremental`` (``ndcg@10`` on the newer period), each with train_minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import recipe, trained  # noqa: E402  (the same train-or-load helpers)

CONFIGS = "recipes/configs/ml100k/"
POINTWISE = CONFIGS + "smollm2_pointwise.yaml"
ATOMIC = CONFIGS + "smollm2_atomic.yaml"
SDPO = CONFIGS + "smollm2_atomic_sdpo.yaml"
MULTITASK = CONFIGS + "smollm2_atomic_multitask.yaml"
INCREMENTAL = CONFIGS + "smollm2_atomic_incremental.yaml"


def run(name: str, config: str, overrides: list[str], args, train: bool = True) -> dict:
    """Train (or reuse) and evaluate one run; its eval_results.json plus train_minutes."""
    folder = Path(args.out) / name
    overrides = [f"run.output_dir={folder}", "eval.users=null", *overrides, *args.set]
    seconds = trained(folder, args.retrain, lambda: recipe("finetune", config, overrides)) if train else 0.0
    if args.retrain or not (folder / "eval_results.json").is_file():
        recipe("evaluate", config, overrides + ([] if train else ["run.checkpoint=base"]))
    results = json.loads((folder / "eval_results.json").read_text())
    return {**results, "train_minutes": round(seconds / 60, 2)}


def ranking_row(results: dict) -> dict:
    m = results["metrics"]
    return {"ndcg@10": round(m["ndcg@10"], 4), "hit@10": round(m["hit@10"], 4), "mrr@10": round(m["mrr@10"], 4),
            "users": results["protocol"]["users"], "train_minutes": results["train_minutes"]}


def pointwise(args) -> dict:
    def row(results):
        m = results["metrics"]
        return {"auc": round(m["auc"], 4), "examples": m["examples"], "like_rate": round(m["like_rate"], 4),
                "train_minutes": results["train_minutes"]}

    shots = {str(n): row(run(f"pointwise-{n}", POINTWISE, [f"train.examples={n}"], args)) for n in args.shots}
    zero = row(run("pointwise-zero-shot", POINTWISE, [], args, train=False))
    return {"pointwise": {**shots[str(max(args.shots))], "shots": shots, "zero_shot": zero}}


def contrastive(args) -> dict:
    init = Path(args.out) / "sft_init"
    run("sft_init", ATOMIC, [f"train.epochs={args.epochs}"], args)
    start = [f"train.init_adapter={init / 'adapter'}", f"train.epochs={args.epochs}"]
    return {"sft_init": ranking_row(json.loads((init / "eval_results.json").read_text()) | {"train_minutes": 0}),
            "sft": ranking_row(run("sft", ATOMIC, start, args)),
            "contrastive": ranking_row(run("contrastive", SDPO, start, args))}


def multitask(args) -> dict:
    return {"multitask": ranking_row(run("multitask", MULTITASK, [f"train.epochs={2 * args.epochs}"], args)),
            "next_item_only": ranking_row(run("next_item_only", ATOMIC, [f"train.epochs={2 * args.epochs}"], args))}


def incremental(args) -> dict:
    stale = Path(args.out) / "stale"
    common = [f"train.epochs={args.epochs}"]
    out = {"stale": ranking_row(run("stale", INCREMENTAL, common + ["data.train_period=before",
                                                                    "train.init_adapter=null"], args))}
    out["incremental"] = ranking_row(run("incremental", INCREMENTAL,
                                         common + [f"train.init_adapter={stale / 'adapter'}"], args))
    out["retrained"] = ranking_row(run("retrained", INCREMENTAL, common + ["data.train_period=all",
                                                                           "train.init_adapter=null"], args))
    return out


PARTS = {"pointwise": pointwise, "contrastive": contrastive, "multitask": multitask, "incremental": incremental}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--shots", nargs="+", type=int, default=[16, 64, 256], help="pointwise training examples")
    parser.add_argument("--epochs", type=float, default=1.0, help="the training budget unit of the ranking parts")
    parser.add_argument("--out", default="runs/paradigms")
    parser.add_argument("--retrain", action="store_true", help="train again even where outputs exist")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    args = parser.parse_args()
    result = {}
    for part in args.parts:
        result.update(PARTS[part](args))
        print(f"{part}: {json.dumps(result)}", flush=True)
    result["budget"] = {"epochs": args.epochs, "shots": args.shots, "overrides": args.set}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
