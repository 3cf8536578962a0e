"""Quality on ml-100k: the genrec LLM recipe vs SASRec vs most-popular-unseen, same harness.

    .venv/bin/python benchmarks/quality.py [--seeds 42 43 44] [--retrain]
        [--genrec-config recipes/configs/ml100k/smollm2_atomic_ensemble.yaml]
        [--sasrec-config recipes/configs/ml100k/sasrec.yaml] [--out runs/quality_ens] [--set KEY=VALUE ...]

Per seed, each system is trained by its own recipe (recipes/finetune.py + recipes/evaluate.py
for genrec, recipes/sasrec.py for SASRec) into ``<out>/seed-<s>/<system>/``, or loaded from there
when it was trained before (``--retrain`` trains again). All are evaluated on every test user
(leave-one-out, full ranking over the catalog, seen items excluded) by the same metric code;
most-popular-unseen is scored by genrec's evaluate on the same users. Training time is the
wall time of the training recipe (for SASRec it includes its few seconds of ranking), recorded
next to its outputs so that a later load reports it. ``--set`` passes config overrides to every
recipe (e.g. another data set). When the genrec recipe is an ensemble (train.ensemble > 1) its member 0
is also evaluated alone (``decode.members=1``, into ``<out>/seed-<s>/genrec_single/``) and reported as
``genrec_single``: the single-run recipe, smollm2_atomic.yaml.
Last line: one JSON object with the mean (and std over seeds) of hit@10, ndcg@10, mrr@10 per
system and the mean training minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("hit@10", "ndcg@10", "mrr@10")
TIMING_FILE = "train_seconds.json"


def recipe(name: str, config: str, overrides: list[str]) -> None:
    """Run recipes/<name>.py as a user does: its own process. With GENREC_RECIPES_IN_PROCESS=1 (the test
    suite's benchmark checks) its main() runs in this process instead: the same code, one interpreter
    start instead of one per recipe."""
    cmd = [sys.executable, str(REPO / "recipes" / f"{name}.py"), "--config", config, *overrides]
    print("$", " ".join(cmd), flush=True)
    if os.environ.get("GENREC_RECIPES_IN_PROCESS") == "1":
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--config", config, *overrides])
        return
    subprocess.run(cmd, check=True, cwd=REPO, env=os.environ.copy())


def trained(folder: Path, retrain: bool, train) -> float:
    """Seconds the training took: measured now, or read from a previous run in ``folder``."""
    marker = folder / TIMING_FILE
    if not retrain and marker.is_file():
        return json.loads(marker.read_text())["seconds"]
    start = time.perf_counter()
    train()
    seconds = round(time.perf_counter() - start, 1)  # as stored, so a later load reports the same figure
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"seconds": seconds}))
    return seconds


def run_seed(seed: int, args) -> dict:
    root = Path(args.out) / f"seed-{seed}"
    llm, sas = root / "genrec", root / "sasrec"
    common = [f"run.seed={seed}", "eval.users=null", *args.set]

    llm_args = [f"run.output_dir={llm}", *common]
    llm_seconds = trained(llm, args.retrain, lambda: recipe("finetune", args.genrec_config, llm_args))
    if args.retrain or not (llm / "eval_results.json").is_file():
        recipe("evaluate", args.genrec_config, llm_args)
    llm_results = json.loads((llm / "eval_results.json").read_text())
    single = root / "genrec_single"
    if (llm / "adapter" / "ensemble.json").is_file():  # an ensemble (train.ensemble): its member 0 alone, too
        if args.retrain or not (single / "eval_results.json").is_file():
            recipe("evaluate", args.genrec_config,
                   [f"run.output_dir={single}", f"run.checkpoint={llm / 'adapter'}", "decode.members=1", *common])

    sas_args = [f"run.output_dir={sas}", *common]
    sas_seconds = trained(sas, args.retrain, lambda: recipe("sasrec", args.sasrec_config, sas_args))
    if not (sas / "eval_results.json").is_file():
        recipe("sasrec", args.sasrec_config, sas_args + ["sasrec.retrain=false"])
    sas_results = json.loads((sas / "eval_results.json").read_text())

    return {
        "users": llm_results["protocol"]["users"],
        "genrec": llm_results["metrics"],
        **({"genrec_single": json.loads((single / "eval_results.json").read_text())["metrics"]}
           if (llm / "adapter" / "ensemble.json").is_file() else {}),
        "sasrec": sas_results["metrics"],
        "popularity": llm_results["baselines"]["popularity"],
        "train_seconds": {"genrec": llm_seconds, "sasrec": sas_seconds},
    }


def summarise(runs: list[dict], system: str) -> dict:
    out = {}
    for m in METRICS:
        values = [r[system][m] for r in runs]
        out[m] = round(statistics.fmean(values), 4)
        out[f"{m}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--retrain", action="store_true", help="train again even where outputs exist")
    parser.add_argument("--genrec-config", default="recipes/configs/ml100k/smollm2_atomic_ensemble.yaml")
    parser.add_argument("--sasrec-config", default="recipes/configs/ml100k/sasrec.yaml")
    parser.add_argument("--out", default="runs/quality_ens")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    args = parser.parse_args()
    runs = [run_seed(seed, args) for seed in args.seeds]
    users = {r["users"] for r in runs}
    result = {
        "users": users.pop() if len(users) == 1 else sorted(users),
        "genrec": summarise(runs, "genrec"),
        **({"genrec_single": summarise(runs, "genrec_single")} if all("genrec_single" in r for r in runs) else {}),
        "sasrec": summarise(runs, "sasrec"),
        "popularity": summarise(runs, "popularity"),
        "train_minutes": {s: round(statistics.fmean(r["train_seconds"][s] for r in runs) / 60, 2)
                          for s in ("genrec", "sasrec")},
        "seeds": args.seeds,
        "genrec_config": args.genrec_config,
        "sasrec_config": args.sasrec_config,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
