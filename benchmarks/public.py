"""Public benchmarks: genrec vs SASRec vs most-popular on Amazon Beauty (leave-one-out) or Amazon Office
(temporal 8:1:1, MiniOneRec's files), each under its field's protocol, next to the published figures.

    .venv/bin/python benchmarks/public.py --dataset beauty|office [--seeds 42 43 44] [--out DIR]
        [--systems genrec sasrec popularity] [--retrain] [--smoke] [--set KEY=VALUE ...]
        [--genrec-set KEY=VALUE ...]

Per seed, each system is trained by its own recipe into ``<out>/seed-<s>/<system>/`` (recipes/finetune.py +
recipes/evaluate.py with ``recipes/configs/<dataset>/smollm2_atomic.yaml``; recipes/sasrec.py with
``recipes/configs/<dataset>/sasrec.yaml``), or reloaded from there when it was trained before (``--retrain``
trains again). When the genrec recipe reads a SASRec (its item rows start from one, ``items.atomic_init=sasrec``,
or its ranking weighs one in, ``decode.sasrec_weight``), the seed's SASRec is trained first and its checkpoint
passed to genrec (``items.sasrec_checkpoint``, never given by hand), whose training minutes then count both
(``genrec_train_minutes`` splits them). Every choice is made on validation (genrec keeps its best validation NDCG@10,
``train.select_best``; SASRec early-stops on it); the test split is only scored. Most-popular is scored here
(no model) by the same split, seen-item rule and metric code, on the same users or rows. Data is read from
``../shared/data`` (the configs' ``data.path``; ``--set data.path=...`` for another copy).

``--smoke``: the plumbing in seconds (used by tests/test_public.py): two training steps, a 2-epoch tiny
SASRec and a seeded sample of 16 evaluated users/rows; pass the model and data with ``--set``.

Last line: one JSON object: dataset, protocol, users (Beauty) or rows (Office), per system the mean (and
std over seeds) of hit@K and ndcg@K for K = 3, 5, 10, the published figures with their source, and the
mean training minutes (``genrec_train_minutes``: its SASRec and LLM parts, when it has both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import recipe, trained  # noqa: E402  (the ml-100k benchmark's recipe runner and timing marker)

METRICS = tuple(f"{m}@{k}" for k in (3, 5, 10) for m in ("hit", "ndcg"))
SYSTEMS = ("genrec", "sasrec", "popularity")
SMOKE = ["train.max_steps=2", "train.eval_every=0", "train.select_best=false", "train.eval_users=8",
         "train.max_minutes=null", "train.save_every=0", "eval.users=16", "decode.batch_users=8", "sasrec.epochs=2",
         "sasrec.hidden=16", "sasrec.inner=32", "sasrec.eval_batch=64"]

DATASETS = {
    "beauty": {
        "protocol": "leave-one-out: per user, last item = test, second-to-last = validation, the rest training; "
                    "full ranking over all items; history items excluded; every user",
        "count": "users",
        "published": {
            "source": "../shared/data/README.md: test figures on this exact split (S3-Rec's Beauty.txt), collected "
                      "in the eSASRec repository's README (blondered/transformer_benchmark); 'reported' = from the "
                      "papers, 'recalculated' = reproduced there. Recall@10 = hit@10 (one target per user).",
            "models": {
                "SASRec (reported, original BCE loss)": {"hit@10": 0.0605, "ndcg@10": 0.0318, "source": "TIGER paper"},
                "S3-Rec": {"hit@10": 0.0647, "ndcg@10": 0.0327, "source": "reported"},
                "TIGER": {"hit@10": 0.0648, "ndcg@10": 0.0384, "source": "reported"},
                "HSTU (reported)": {"hit@10": 0.0704, "ndcg@10": 0.0389, "source": "reported"},
                "HSTU (recalculated)": {"hit@10": 0.0788, "ndcg@10": 0.0439, "source": "recalculated"},
                "ActionPiece": {"hit@10": 0.0775, "ndcg@10": 0.0424, "source": "reported"},
                "DuoRec": {"hit@10": 0.0845, "ndcg@10": 0.0443, "source": "reported"},
                "eSASRec": {"hit@10": 0.0928, "ndcg@10": 0.0523, "source": "recalculated"},
                "SASRec + sampled softmax": {"hit@10": 0.0921, "ndcg@10": 0.0531, "source": "recalculated"},
            },
        },
    },
    "office": {
        "protocol": "temporal 8:1:1 (MiniOneRec's files): every (history of <= 10 items -> next item) row of every "
                    "user, sorted by the target's time and cut globally; full ranking over all items; repeat "
                    "purchases count (history items not excluded); every test row",
        "count": "rows",
        "published": {
            "source": "../shared/data/README.md: MiniOneRec technical report, main table (Qwen2.5-1.5B-based systems "
                      "trained on the full published training file). Context, not like-for-like: train.csv here is a "
                      "reconstruction holding about a quarter of the published training rows.",
            "models": {name: dict(zip(METRICS, values)) for name, values in {
                "GRU4Rec": (0.0629, 0.0528, 0.0789, 0.0595, 0.1019, 0.0669),
                "SASRec": (0.0861, 0.0769, 0.0949, 0.0805, 0.1120, 0.0858),
                "TIGER": (0.0986, 0.0852, 0.1163, 0.0960, 0.1408, 0.1002),
                "LC-Rec": (0.0921, 0.0807, 0.1048, 0.0859, 0.1237, 0.0920),
                "BIGRec": (0.1069, 0.0961, 0.1204, 0.1017, 0.1434, 0.1091),
                "D3": (0.1204, 0.1055, 0.1406, 0.1139, 0.1634, 0.1213),
                "S-DPO": (0.1169, 0.1033, 0.1356, 0.1110, 0.1587, 0.1255),
                "MiniOneRec": (0.1217, 0.1088, 0.1420, 0.1172, 0.1634, 0.1242),
            }.items()},
        },
    },
}


def config_path(dataset: str, system: str) -> str:
    name = "smollm2_atomic.yaml" if system == "genrec" else "sasrec.yaml"
    return str(REPO / "recipes" / "configs" / dataset / name)


def popularity(dataset: str, overrides: list[str], folder: Path) -> dict:
    """Most-popular on the evaluated cases: genrec's own split, seen-item rule, sample and metric code."""
    from genrec.baselines.popularity import baseline_metrics
    from genrec.config import load_config
    from genrec.data import load_split
    from genrec.evaluation.protocol import evaluation_cases, period_start, protocol
    from genrec.io import atomic_write_text

    cfg = load_config(config_path(dataset, "genrec"), overrides + ["eval.baselines=[popularity]"])
    split = load_split(cfg)
    cases = evaluation_cases(split, cfg.eval.users, cfg.run.seed, period_start(cfg), cfg.eval.split)
    results = {"metrics": baseline_metrics(cfg, split, cases, cfg.eval.split)["popularity"],
               "protocol": protocol(cfg, split, cases, cfg.eval.split, model="most-popular (training counts)",
                                    identifier="catalog index", decoding={"method": "training popularity order"})}
    atomic_write_text(folder / "eval_results.json", json.dumps(results, indent=2))
    return results


def genrec_reads_sasrec(dataset: str, overrides: list[str]) -> bool:
    """Whether the genrec recipe reads a SASRec: its item rows start from one (``items.atomic_init=sasrec``) or
    its ranking weighs one in (``decode.sasrec_weight``). Then that SASRec is part of genrec, trained first, and
    its minutes count in genrec's."""
    from genrec.config import load_config

    cfg = load_config(config_path(dataset, "genrec"), overrides, check=False)  # its checkpoint is passed later
    return cfg.items.atomic_init == "sasrec" or cfg.decode.sasrec_weight > 0


def run_seed(seed: int, args) -> dict:
    root = Path(args.out) / f"seed-{seed}"
    common = [f"run.seed={seed}", *(SMOKE if args.smoke else []), *args.set]
    if not args.smoke:
        common.insert(1, "eval.users=null")
    out, seconds, parts = {}, {}, {}
    sas_folder = root / "sasrec"
    from_sasrec = "genrec" in args.systems and genrec_reads_sasrec(args.dataset, [*common, *args.genrec_set])
    if "sasrec" in args.systems or from_sasrec:  # first: genrec's item rows may start from this model
        cfg, sas = config_path(args.dataset, "sasrec"), [f"run.output_dir={sas_folder}", *common]
        seconds["sasrec"] = trained(sas_folder, args.retrain, lambda: recipe("sasrec", cfg, sas))
        if "sasrec" in args.systems:
            if not (sas_folder / "eval_results.json").is_file():
                recipe("sasrec", cfg, sas + ["sasrec.retrain=false"])
            out["sasrec"] = json.loads((sas_folder / "eval_results.json").read_text())
    if "genrec" in args.systems:
        folder = root / "genrec"
        cfg, llm = config_path(args.dataset, "genrec"), [f"run.output_dir={folder}", *common, *args.genrec_set]
        if from_sasrec:
            llm.append(f"items.sasrec_checkpoint={sas_folder / 'sasrec.pt'}")
        llm_seconds = trained(folder, args.retrain, lambda: recipe("finetune", cfg, llm))
        seconds["genrec"] = llm_seconds + (seconds["sasrec"] if from_sasrec else 0.0)
        if from_sasrec:
            parts = {"sasrec": seconds["sasrec"], "llm": llm_seconds}
        if args.retrain or not (folder / "eval_results.json").is_file():
            recipe("evaluate", cfg, llm)
        out["genrec"] = json.loads((folder / "eval_results.json").read_text())
    if "popularity" in args.systems:
        folder = root / "popularity"
        folder.mkdir(parents=True, exist_ok=True)
        out["popularity"] = popularity(args.dataset, common, folder)
    return {"results": out, "train_seconds": seconds, "genrec_parts": parts}


def other_dataset(args) -> str | None:
    """The dataset --set points the recipes at when it is not their own (benchmarks/transfer.py), else None."""
    from genrec.config import load_config

    own = load_config(config_path(args.dataset, "sasrec"), [], check=False).data.dataset
    named = [o.split("=", 1)[1] for o in args.set if o.split("=", 1)[0] == "data.dataset"]
    return named[-1] if named and named[-1] != own else None


def summarise(runs: list[dict], system: str) -> dict:
    out = {}
    for m in METRICS:
        values = [r["results"][system]["metrics"][m] for r in runs]
        out[m] = round(statistics.fmean(values), 4)
        out[f"{m}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--out", default=None, help="default: runs/public/<dataset>")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--retrain", action="store_true", help="train again even where outputs exist")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets and a 16-case sample (plumbing only)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every system")
    parser.add_argument("--genrec-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for the genrec recipe only (e.g. decode.sasrec_weight=1, which SASRec's "
                             "config would reject)")
    args = parser.parse_args(argv)
    args.out = args.out or str(REPO / "runs" / "public" / args.dataset)
    spec = DATASETS[args.dataset]
    runs = [run_seed(seed, args) for seed in args.seeds]
    protocols = [p for r in runs for p in (res["protocol"] for res in r["results"].values())]
    counts = sorted({p[spec["count"]] for p in protocols})
    other = other_dataset(args)
    result = {
        "dataset": other or args.dataset,
        **({"recipes_of": args.dataset} if other else {}),
        "protocol": spec["protocol"],
        spec["count"]: counts[0] if len(counts) == 1 else counts,
        **{system: summarise(runs, system) for system in args.systems},
        # published figures belong to the recipe's own dataset; another one (data.dataset=...) has none here
        "published": {} if other else spec["published"],
        "train_minutes": {s: round(statistics.fmean(r["train_seconds"][s] for r in runs) / 60, 2)
                          for s in ("genrec", "sasrec") if s in args.systems},
        # genrec reading a SASRec (item rows, ranking): its minutes are the SASRec's plus the LLM's, each given here
        **({"genrec_train_minutes": {part: round(statistics.fmean(r["genrec_parts"][part] for r in runs) / 60, 2)
                                     for part in ("sasrec", "llm")}} if runs[0]["genrec_parts"] else {}),
        "seeds": args.seeds,
        "smoke": args.smoke,
        "configs": {s: config_path(args.dataset, s) for s in ("genrec", "sasrec") if s in args.systems},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
