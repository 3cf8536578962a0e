"""Popularity deconfounding at decoding time on a public benchmark (Amazon Beauty, leave-one-out, every user):
the headline recipe as ``benchmarks/public.py`` trained it for each seed, decoded with each decoding-time causal
recipe, every setting chosen on validation, test rows as seed means with paired bootstrap intervals, and the
trade-off drawn.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/causal_public.py [--dataset beauty] [--root runs/public/beauty]
        [--seeds 42 43 44] [--penalties -0.05 -0.1 ...] [--gammas 0.1 0.25] [--mixes 0.01 0.05 ...]
        [--trained deconfounded pd_term] [--trained-gammas 0 0.25 0.5 1]
        [--calibrated-mixes 0.01 0.05 ...] [--plot docs/img/causal_beauty.png] [--set KEY=VALUE ...]
        [--records benchmarks/results/causal_beauty/seed-43.json.gz ...]

Systems, all from the same adapter and SASRec per seed (``<root>/seed-<s>/genrec/adapter``,
``<root>/seed-<s>/sasrec/sasrec.pt``), so each comparison with SFT is paired and no system trains longer:
- ``sft``: the recipe (``recipes/configs/<dataset>/smollm2_atomic.yaml``) ranking as its evaluation does;
- ``sft_penalty``: ``decode.popularity_gamma`` < 0, a post-hoc popularity penalty (PDA's adjustment turned
  against popularity);
- ``sft_pda``: ``decode.popularity_gamma`` > 0, PDA's popularity prior added (the other side of the curve);
- ``sft_mix``: ``decode.propensity_mix`` = beta, rank by p(item | h) * (1 + beta * w(item));
- ``sft_mix_calibrated``: the same with p = softmax(score / T), ``decode.propensity_temperature`` = T fitted per
  seed on the validation targets (``genrec.causal.calibration``): the mix's argument needs a calibrated p, and
  the LLM x SASRec product is over-confident. Its knob is beta (``beta_cal`` in the grid).
Training-time recipes (``--trained``, none by default: each costs the recipe's whole training budget per seed):
- ``deconfounded``: each target's loss weighted by (count + 1)^-0.5 (``train.target_weighting=inverse_popularity``,
  ``train.weight_power=0.5``, ml-100k's milder weights), decoded over ``decode.popularity_gamma`` >= 0 (PDA);
- ``pd_term``: PD's popularity term in the item softmax (``train.popularity_prior=1``), decoded over gamma >= 0.
Each is the same config, seed, SASRec and ``train.max_minutes`` as SFT with its training keys added, trained into
``<root>/seed-<s>/causal/<name>/`` (reloaded when there; its minutes reported beside SFT's), ranked as the recipe
ranks (its LLM's log p plus the seed's SASRec's), and compared with SFT's test rankings user by user.
Counterfactual fine-tuning is left to ``benchmarks/causal.py`` (ml-100k): its knob needs a second, null-history
score per case.

How: every case's score of every item is computed once per seed and split (the LLM's log p, cached as
``<root>/seed-<s>/causal/llm_log_probs_<split>.pt``, plus ``decode.sasrec_weight`` times SASRec's), and each
setting adds the prior that decoding would add (``Recommender.prior.node_prior``, one value per item) before the
same top-K, seen-item rule and metric code as ``recipes/evaluate.py``; so ``sft`` reproduces the evaluation's
figures. Choice rule (``benchmarks/causal.py``'s): the best validation debiased NDCG@10 among settings within 5%
of SFT's validation NDCG@10, on the seeds' mean. ``debiased_ndcg@10``: SNIPS NDCG@10 (propensity from training
popularity, weights capped at eval.ips_clip), ``snips_ess`` its effective sample size; the intervened test
(users resampled proportionally to 1 / propensity) is the second estimate. ``relative_ci95``: paired percentile
bootstrap over test users (each user's NDCG averaged over the seeds first).

Records: each seed scored here is also written as a small record, ``<root>/seed-<s>/causal/record.json.gz``
(``causal_records``: every setting's metrics, each test user's rank of their target, T, the training minutes,
the split's targets and popularity). ``--records`` pools records of seeds scored before, on this machine or
another, with the ``--seeds`` scored now (or alone): the seeds must be distinct and share the split and the grid.
A seed takes ~95 minutes to retrain and a run folder does not outlive its machine; the records let three seeds
be pooled anyway. The records of the seeds in BENCHMARKS.md are kept under ``benchmarks/results/causal_beauty/``.

The plot: per recipe, test NDCG@10 and debiased NDCG@10 relative to SFT at every value of its knob, with the
bootstrap intervals as bars, SFT at the origin, the chosen settings ringed and the target region shaded.
Last line: JSON {"dataset", "users", "seeds", "machines", "sft": {...}, "sft_penalty": {..., "relative_ci95": {...}}, ...,
"chosen": {...}, "calibration": {"temperature": [per seed], "valid_nll": {...}},
"target_train_count": {"valid"|"test": {"mean", "median"}}, "valid_grid": {...},
"curve": {...}, "plot": path}.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import causal_records  # noqa: E402
from causal import STANDARD_LOSS, averaged, choose, relative_change, row  # noqa: E402  (the ml-100k benchmark's rule and rows)
from ensembles import llm_log_probs  # noqa: E402
from public import SMOKE, config_path  # noqa: E402
from quality import recipe, trained  # noqa: E402

from genrec.baselines import sasrec  # noqa: E402
from genrec.causal.calibration import fit_temperature  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.decoding.ensemble import item_prior  # noqa: E402
from genrec.decoding.search import top_k_unseen  # noqa: E402
from genrec.evaluation.bias import ndcg_from_ranks, paired_relative_ci_per_user, target_ranks  # noqa: E402
from genrec.evaluation.protocol import score_cases  # noqa: E402
from genrec.io import atomic_path  # noqa: E402
from genrec.model.loading import resolve_dtype  # noqa: E402
from genrec.recommender import Recommender  # noqa: E402
from genrec.runtime import make_accelerator, set_threads  # noqa: E402

SPLITS = ("valid", "test")
KNOBS = {"gamma": "popularity_gamma", "beta": "propensity_mix", "beta_cal": "propensity_mix"}
# row -> (the trained system it decodes, knob, which knob values belong to the row)
FAMILIES = {"sft_penalty": ("sft", "gamma", lambda v: v < 0), "sft_pda": ("sft", "gamma", lambda v: v > 0),
            "sft_mix": ("sft", "beta", lambda v: v > 0), "sft_mix_calibrated": ("sft", "beta_cal", lambda v: v > 0)}
# training-time recipes: the training keys added to SFT's recipe
TRAINED = {"deconfounded": ["train.target_weighting=inverse_popularity", "train.weight_power=0.5"],
           "pd_term": ["train.popularity_prior=1.0"]}
TARGET = {"debiased_gain": 0.10, "standard_loss": STANDARD_LOSS}  # issue 25's bar, drawn on the plot


def load_seed(config: str, folder: Path, overrides: list[str], adapter: Path | None = None) -> Recommender:
    """The seed's recipe as evaluated: its adapter (SFT's unless another is given) and (when the recipe reads
    one) its SASRec."""
    adapter, checkpoint = adapter or folder / "genrec" / "adapter", folder / "sasrec" / "sasrec.pt"
    if not (adapter / "adapter_config.json").is_file():
        raise SystemExit(f"{adapter}: no trained adapter; train the seed first with benchmarks/public.py "
                         f"--seeds {folder.name.removeprefix('seed-')} --out {folder.parent}")
    base = [f"run.checkpoint={adapter}", "decode.members=1", "eval.users=null", *overrides]
    if load_config(config, base, check=False).decode.sasrec_weight:
        base.append(f"items.sasrec_checkpoint={checkpoint}")
    return Recommender.load(load_config(config, base))[0]


def train_recipe(name: str, config: str, folder: Path, overrides: list[str], smoke: bool) -> float:
    """A training-time recipe for one seed: SFT's config, seed, SASRec and budget plus its training keys, into
    ``<seed folder>/causal/<name>/`` (reloaded when trained before). Returns its training seconds."""
    out = folder / "causal" / name
    keys = [f"run.output_dir={out}", *(SMOKE if smoke else []), "eval.users=null", *overrides, *TRAINED[name]]
    if load_config(config, keys, check=False).items.atomic_init == "sasrec":
        keys.append(f"items.sasrec_checkpoint={folder / 'sasrec' / 'sasrec.pt'}")
    return trained(out, False, lambda: recipe("finetune", config, keys))


def base_scores(rec: Recommender, split_name: str, cache: Path) -> torch.Tensor:
    """[cases, items]: each case's score of each item before any decoding prior: the LLM's log p (cached) plus
    decode.sasrec_weight times SASRec's, as ``Recommender.rank`` adds them."""
    if cache.is_file():
        llm = torch.load(cache)
    else:
        with make_accelerator(resolve_dtype(rec.setup.cfg.model.dtype)).autocast():
            llm = llm_log_probs(rec, split_name)
        with atomic_path(cache) as tmp:
            torch.save(llm, tmp)
    weight = rec.options.sasrec_weight
    if weight:
        split, max_history = rec.setup.split, rec.setup.cfg.data.max_history
        histories = [split.case_example(c, max_history).history for c in split.cases(split_name)]
        llm += weight * sasrec.log_probs(rec.sasrec_model, histories).cpu()
    return llm


def evaluate(rec: Recommender, scores: torch.Tensor, split_name: str, setting: tuple[str, float],
             system: str = "sft", temperature: float = 1.0) -> tuple[dict, list[list[int]]]:
    """Every case of ``split_name`` ranked by ``scores`` plus the prior of one decoding setting, and scored: the
    metrics and each case's top-K items. ``temperature``: the seed's fitted decode.propensity_temperature, used by
    the calibrated mix (``beta_cal``)."""
    cfg, split = rec.setup.cfg, rec.setup.split
    off = {"popularity_gamma": 0.0, "propensity_mix": 0.0, "contrastive_lambda": 0.0}  # one knob set, the rest off
    options = replace(rec.options, **{**off, KNOBS[setting[0]]: setting[1]},
                      propensity_temperature=temperature if setting[0] == "beta_cal" else 1.0)
    prior = rec.prior.node_prior(options)
    ranked = scores + item_prior(prior, rec.setup.index).cpu() if prior is not None else scores.clone()
    cases = split.cases(split_name)
    seen = [split.case_seen(c) if options.exclude_seen else set() for c in cases]
    top = top_k_unseen(ranked, seen, max(cfg.eval.ks))
    metrics = score_cases({c.case_id: t for c, t in zip(cases, top)}, split, cases, cfg.eval.ks,
                          ips_clip=cfg.eval.ips_clip, seed=cfg.run.seed)
    print(f"  seed {cfg.run.seed} {system} {split_name} {setting[0]}={setting[1]:+g}: NDCG@10 {metrics['ndcg@10']:.4f}  "
          f"debiased {metrics['snips_ndcg@10']:.4f}  ARP@10 {metrics['arp@10']:.0f}", flush=True)
    return metrics, [[i for i, _ in t] for t in top]


def calibrate(rec: Recommender, scores: torch.Tensor) -> dict:
    """decode.propensity_temperature for this seed: the T whose softmax(score / T) best predicts the validation
    targets (each case's softmax over the items it may be recommended), and the NLL before and after."""
    split = rec.setup.split
    cases = split.cases("valid")
    targets = [c.target for c in cases]
    excluded = [split.case_seen(c) for c in cases] if rec.options.exclude_seen else None
    fit = fit_temperature(scores, targets, excluded)
    print(f"  seed {rec.setup.cfg.run.seed}: propensity_temperature {fit.temperature:.3f} (validation NLL "
          f"{fit.nll_at_one:.4f} at T = 1, {fit.nll:.4f} fitted, {fit.cases} cases)", flush=True)
    return {"temperature": round(fit.temperature, 4),
            "valid_nll": {"t=1": round(fit.nll_at_one, 4), "fitted": round(fit.nll, 4)}}


def target_popularity(record: dict) -> dict:
    """Mean and median training count of each split's targets. A popularity-demoting knob costs less where the
    targets are rarer, so when test's targets are rarer than validation's (leave-one-out: test is one step
    later), the validation rule's 5% floor is a conservative stand-in for test's."""
    counts = np.asarray(record["train_popularity"])
    out = {}
    for split_name in SPLITS:
        target_counts = counts[record["targets"][split_name]]
        out[split_name] = {"mean": round(float(target_counts.mean()), 2), "median": float(np.median(target_counts))}
    return out


def plot(curve: dict, chosen: dict, path: Path, title: str) -> None:
    """Test NDCG@10 vs debiased NDCG@10, each relative to SFT, per recipe over its knob, interval bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    xs_all = [100 * p["ci95"]["ndcg@10"][i] for pts in curve.values() for p in pts for i in (0, 1)]
    ys_all = [100 * p["ci95"]["debiased_ndcg@10"][i] for pts in curve.values() for p in pts for i in (0, 1)]
    # the axes hold every interval, SFT and the target's corner, nothing more
    lo_x, hi_x = min([-100 * TARGET["standard_loss"] - 1, *xs_all]) - 1, max([1.0, *xs_all]) + 1
    lo_y, hi_y = min([-1.0, *ys_all]) - 1, max([100 * TARGET["debiased_gain"] + 2, *ys_all]) + 1
    ax.fill_between([-100 * TARGET["standard_loss"], hi_x], 100 * TARGET["debiased_gain"], hi_y, color="tab:green",
                    alpha=0.08, label=f"target: debiased >= +{100 * TARGET['debiased_gain']:.0f}%, "
                                      f"standard >= -{100 * TARGET['standard_loss']:.0f}%")
    for (family, points), colour in zip(curve.items(), ("tab:red", "tab:blue", "tab:purple", "tab:orange",
                                                          "tab:brown", "tab:cyan", "tab:olive")):
        xs = [100 * p["relative"]["ndcg@10"] for p in points]
        ys = [100 * p["relative"]["debiased_ndcg@10"] for p in points]
        xerr = [[x - 100 * p["ci95"]["ndcg@10"][0] for x, p in zip(xs, points)],
                [100 * p["ci95"]["ndcg@10"][1] - x for x, p in zip(xs, points)]]
        yerr = [[y - 100 * p["ci95"]["debiased_ndcg@10"][0] for y, p in zip(ys, points)],
                [100 * p["ci95"]["debiased_ndcg@10"][1] - y for y, p in zip(ys, points)]]
        knob = points[0]["knob"]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o-", color=colour, ms=4, lw=1.2, elinewidth=0.8, capsize=2,
                    label=f"{family} ({knob})")
        for x, y, p in zip(xs, ys, points):
            ax.annotate(f"{p['value']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=colour)
            if chosen.get(family) == {knob: p["value"]}:
                ax.plot([x], [y], "o", ms=12, mfc="none", mec=colour, mew=1.5)
    ax.plot([0], [0], "k*", ms=12, label="SFT (the recipe as it ranks)")
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(lo_y, hi_y)
    ax.set_xlabel("test NDCG@10, change vs SFT (%)")
    ax.set_ylabel("test debiased (SNIPS) NDCG@10, change vs SFT (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def score_seed(seed: int, args: argparse.Namespace, root: Path, config: str, grids: dict) -> dict:
    """One seed: every system decoded at every setting of its grid on both splits, kept as a record
    (``causal_records``) written to ``<root>/seed-<s>/causal/record.json.gz``."""
    folder = root / f"seed-{seed}"
    overrides = [f"run.seed={seed}", *args.set]
    minutes, calibration, split, settings = {}, None, None, []
    sft_seconds = folder / "genrec" / "train_seconds.json"
    if sft_seconds.is_file():
        minutes["sft"] = json.loads(sft_seconds.read_text())["seconds"] / 60
    for system, grid in grids.items():
        adapter, cache = folder / "genrec" / "adapter", folder / "causal"
        if system != "sft":
            minutes[system] = train_recipe(system, config, folder, overrides, args.smoke) / 60
            adapter, cache = folder / "causal" / system / "adapter", folder / "causal" / system
        rec = load_seed(config, folder, overrides, adapter)
        if split is None:  # the same for every system of the seed
            split = rec.setup.split
            targets = {name: [c.target for c in split.cases(name)] for name in SPLITS}
        entries = {setting: {"system": system, "knob": setting[0], "value": setting[1]} for setting in grid}
        for split_name in SPLITS:
            scores = base_scores(rec, split_name, cache / f"llm_log_probs_{split_name}.pt")
            if system == "sft" and split_name == "valid" and args.calibrated_mixes:
                calibration = calibrate(rec, scores)  # fitted on validation, used on both splits
            temperature = calibration["temperature"] if system == "sft" and calibration else 1.0
            for setting in grid:
                metrics, rankings = evaluate(rec, scores, split_name, setting, system, temperature)
                entries[setting][split_name] = metrics
                if split_name == "test":  # what the paired bootstrap reads, user by user
                    entries[setting]["test_hits"] = target_ranks(rankings, targets["test"], 10)
            del scores
        settings += entries.values()
        del rec
    cfg = load_config(config, overrides, check=False)
    record = {"dataset": args.dataset, "seed": seed, "machine": causal_records.machine(),
              "config": str(Path(config).relative_to(REPO)) if Path(config).is_relative_to(REPO) else config,
              "overrides": overrides, "ips_clip": cfg.eval.ips_clip,
              "targets": targets,
              "train_popularity": [int(v) for v in split.train_popularity()],
              "calibration": calibration, "train_minutes": {k: round(v, 2) for k, v in minutes.items()},
              "settings": settings}
    path = causal_records.write(folder / "causal" / "record.json.gz", record)
    print(f"  seed {seed}: record {path}", flush=True)
    return json.loads(json.dumps(record))  # as a reader of the file will see it (tuples as lists, floats as text)


def pool(records: list[dict], plot_path: Path) -> dict:
    """The benchmark's result from one record per seed: settings chosen on the seeds' mean validation figures,
    test rows as seed means, intervals from each user's NDCG averaged over the seeds, and the plot."""
    # in seed order, whatever order the records came in: the bootstrap is seeded by the first seed, so the same
    # seeds pooled from --seeds, --records or both, in any order, give the same intervals
    records = sorted(records, key=lambda r: r["seed"])
    first = records[0]
    dataset, seeds, n_users = first["dataset"], [r["seed"] for r in records], len(first["targets"]["test"])
    valid, test, ndcg = {}, {}, {}  # (system, knob, value) -> one per seed
    for record in records:
        for s in record["settings"]:
            key = causal_records.setting_key(s)
            valid.setdefault(key, []).append(s["valid"])
            test.setdefault(key, []).append(s["test"])
            ndcg.setdefault(key, []).append(ndcg_from_ranks(s["test_hits"], n_users))
    systems = list(dict.fromkeys(key[0] for key in valid))
    families = {**FAMILIES, **{name: (name, "gamma", lambda v: v >= 0) for name in systems if name != "sft"}}
    sft = ("sft", "gamma", 0.0)
    if sft not in valid:
        raise SystemExit("the records hold no SFT setting (gamma=0): nothing to compare with")
    calibration = [r["calibration"] for r in records if r.get("calibration")]
    # the calibrated mix's decode.propensity_temperature per seed (fitted on validation), and its NLL gain
    result_calibration = {"temperature": [c["temperature"] for c in calibration],
                          "valid_nll": {k: [c["valid_nll"][k] for c in calibration] for k in ("t=1", "fitted")}}

    def relative_ci(setting: tuple) -> dict:
        ci = paired_relative_ci_per_user(ndcg[setting], ndcg[sft], first["targets"]["test"],
                                         np.asarray(first["train_popularity"]), 10, first["ips_clip"], seed=seeds[0])
        return {"ndcg@10": ci["ndcg@10"], "debiased_ndcg@10": ci["snips_ndcg@10"]}

    mean_valid = {s: averaged(runs) for s, runs in valid.items()}
    mean_test = {s: averaged(runs) for s, runs in test.items()}  # unrounded: rows, changes and the curve
    reference = mean_valid[sft]["ndcg@10"]
    plan = {"sft": sft}
    for family, (system, knob, member) in families.items():
        options = {s: m for s, m in mean_valid.items() if s[0] == system and s[1] == knob and member(s[2])}
        if options:
            plan[family] = choose(options, reference)

    def test_row(setting: tuple[str, str, float], label: str) -> dict:
        runs = test[setting]
        extra = {"per_seed": {"ndcg@10": [round(m["ndcg@10"], 4) for m in runs],
                              "debiased_ndcg@10": [round(m["snips_ndcg@10"], 4) for m in runs]}}
        if setting[1] == "beta_cal":
            extra["propensity_temperature"] = result_calibration["temperature"]
        if label != "sft":
            extra["relative_ci95"] = relative_ci(setting)
        return row(mean_test[setting], **{setting[1]: setting[2]}, **extra, snips_ess=round(runs[0]["snips_ess"], 1),
                   valid_ndcg=round(mean_valid[setting]["ndcg@10"], 4),
                   valid_debiased_ndcg=round(mean_valid[setting]["snips_ndcg@10"], 4))

    result = {"dataset": dataset, "users": n_users, "seeds": seeds}
    result.update({label: test_row(setting, label) for label, setting in plan.items()})
    base = mean_test[sft]
    for label, setting in plan.items():
        if label != "sft":
            result[label]["relative"] = relative_change(mean_test[setting], base,
                                                        ("ndcg@10", "debiased_ndcg@10", "intervened_ndcg@10"))
    curve = {}
    for family, (system, knob, member) in families.items():
        for setting in [s for s in test if s[0] == system and s[1] == knob and member(s[2])]:
            mean = mean_test[setting]
            curve.setdefault(family, []).append({
                "knob": knob, "value": setting[2],
                "relative": relative_change(mean, base),
                "arp@10": round(mean["arp@10"], 1), "ci95": relative_ci(setting)})
    if calibration:
        result["calibration"] = result_calibration
    result["target_train_count"] = target_popularity(first)
    result["chosen"] = {"rule": f"best valid debiased NDCG@10 with valid NDCG@10 >= {1 - STANDARD_LOSS:.2f} x SFT's",
                        **{label: {s[1]: s[2]} for label, s in plan.items()}}
    # SFT's settings keyed "knob=value" as before; a training-time recipe's "name:knob=value"
    result["valid_grid"] = {f"{'' if system == 'sft' else system + ':'}{k}={v:g}": {
        "ndcg@10": round(m["ndcg@10"], 4), "debiased_ndcg@10": round(m["snips_ndcg@10"], 4)}
        for (system, k, v), m in mean_valid.items()}
    # same budget: every recipe's training minutes per seed (SFT's as benchmarks/public.py recorded them)
    result["train_minutes"] = {system: [r["train_minutes"][system] for r in records if system in r["train_minutes"]]
                               for system in systems if any(system in r["train_minutes"] for r in records)}
    result["machines"] = {str(r["seed"]): r.get("machine", {}).get("cpu", "unknown") for r in records}
    result["curve"] = curve
    result["debiased_estimate"] = ("SNIPS, propensity (count+1)/(max+1) from training popularity, "
                                   "weights capped at eval.ips_clip")
    what = "popularity interventions" if len(systems) > 1 else "decoding-time popularity interventions"
    seed_text = ("seed " if len(seeds) == 1 else "seeds ") + " ".join(map(str, seeds))
    plot(curve, result["chosen"], plot_path, f"Amazon {dataset.title()}: {what} on the headline recipe\n"
                                             f"({seed_text}, test; bars: paired bootstrap 95% intervals; "
                                             "circled: chosen on validation)")
    result["plot"] = str(plot_path)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="beauty", choices=["beauty"],
                        help="leave-one-out with a long-tailed catalog (Office's rows count repeats; not here)")
    parser.add_argument("--root", default=None, help="what benchmarks/public.py trained (default runs/public/<dataset>)")
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help="seeds to score here (default 42 43 44, or none when --records are given)")
    parser.add_argument("--records", nargs="*", default=[], metavar="RECORD",
                        help="records of seeds scored before, here or elsewhere (<root>/seed-<s>/causal/"
                             "record.json.gz), pooled with the --seeds scored now")
    parser.add_argument("--penalties", type=float, nargs="*", default=[-0.025, -0.05, -0.1, -0.2, -0.3])
    parser.add_argument("--gammas", type=float, nargs="*", default=[0.1, 0.25])
    parser.add_argument("--mixes", type=float, nargs="*", default=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--calibrated-mixes", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0],
                        help="beta values of the calibrated mix (T fitted on validation per seed); none: off")
    parser.add_argument("--trained", nargs="*", default=[], choices=sorted(TRAINED),
                        help="training-time recipes to train (one budget per seed each) and decode")
    parser.add_argument("--trained-gammas", type=float, nargs="*", default=[0.0, 0.25, 0.5, 1.0],
                        help="decode.popularity_gamma values of the training-time recipes (0: their own scores)")
    parser.add_argument("--smoke", action="store_true", help="train the --trained recipes with public.py's tiny budgets")
    parser.add_argument("--plot", default=None, help="PNG path (default <root>/causal_tradeoff.png)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the recipe")
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else ([] if args.records else [42, 43, 44])
    if not seeds and not args.records:
        parser.error("nothing to pool: give --seeds to score or --records of seeds scored before")
    set_threads()
    root = Path(args.root or REPO / "runs" / "public" / args.dataset)
    config = config_path(args.dataset, "genrec")
    grid = [("gamma", 0.0)] + [("gamma", g) for g in args.penalties + args.gammas] + [("beta", b) for b in args.mixes]
    grid += [("beta_cal", b) for b in args.calibrated_mixes]
    grids = {"sft": grid, **{name: [("gamma", g) for g in args.trained_gammas] for name in args.trained}}

    # the records first, so a broken or unpoolable one is reported before any seed is scored (~15 minutes each)
    records = [causal_records.read(Path(path)) for path in args.records]
    names = list(args.records)
    if records:
        causal_records.check_poolable(records, names)
        clash = sorted(set(seeds) & {r["seed"] for r in records})
        if clash:
            parser.error(f"seed(s) {clash} are both given to --seeds and held by a --records file")
    for seed in seeds:
        records.append(score_seed(seed, args, root, config, grids))
        names.append(str(root / f"seed-{seed}" / "causal" / "record.json.gz"))
    causal_records.check_poolable(records, names)
    result = pool(records, Path(args.plot) if args.plot else root / "causal_tradeoff.png")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
