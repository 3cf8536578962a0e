"""benchmarks/causal_public.py on a tiny Beauty-layout file: the headline recipe trained by benchmarks/public.py,
then its decoding-time causal rows, chosen on validation, with intervals and the trade-off plot."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from public_fixtures import write_sequences

from genrec.evaluation.bias import ndcg_from_ranks, propensity_weights, target_ranks

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("causal_records", REPO / "benchmarks" / "causal_records.py")
records = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(records)
_spec = importlib.util.spec_from_file_location("causal_benchmark", REPO / "benchmarks" / "causal.py")
causal_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(causal_benchmark)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"}


def run(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, check=False, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_causal_public_scores_the_recipe_as_evaluated_and_chooses_on_validation(tmp_path, tiny_model_dir):
    data = write_sequences(tmp_path / "data")
    common = [f"data.path={data}", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32"]
    out = tmp_path / "public"
    run([str(REPO / "benchmarks" / "public.py"), "--dataset", "beauty", "--smoke", "--out", str(out), "--systems",
         "genrec", "--set", *common, "eval.users=null"])
    evaluated = json.loads((out / "seed-42" / "genrec" / "eval_results.json").read_text())
    assert evaluated["protocol"]["decoding"]["sasrec_weight"] == 1.0  # the recipe's product with its SASRec

    png = tmp_path / "tradeoff.png"
    args = [str(REPO / "benchmarks" / "causal_public.py"), "--root", str(out), "--seeds", "42", "--penalties", "-0.5",
            "-5", "--gammas", "5", "--mixes", "0.05", "5", "--calibrated-mixes", "0.05", "5", "--plot", str(png), "--set", *common]
    result = run(args)
    # sft is the recipe exactly as its evaluation ranked: same cases, same figures
    assert result["users"] == evaluated["protocol"]["users"]
    for m in ("ndcg@10", "hit@10"):
        assert result["sft"][m] == round(evaluated["metrics"][m], 4)
    assert set(result) >= {"sft", "sft_penalty", "sft_pda", "sft_mix", "sft_mix_calibrated"}
    for label in ("sft", "sft_penalty", "sft_pda", "sft_mix", "sft_mix_calibrated"):
        r = result[label]
        assert 0 <= r["ndcg@10"] <= r["hit@10"] <= 1 and 0 <= r["debiased_ndcg@10"] <= 1
        assert 1 <= r["snips_ess"] <= result["users"]
        if label != "sft":
            for m in ("ndcg@10", "debiased_ndcg@10"):
                low, high = r["relative_ci95"][m]
                assert low <= high
    grid = result["valid_grid"]
    reference = grid["gamma=0"]["ndcg@10"]
    for family, knob, keep in (("sft_penalty", "gamma", lambda v: v < 0), ("sft_pda", "gamma", lambda v: v > 0),
                               ("sft_mix", "beta", lambda v: v > 0), ("sft_mix_calibrated", "beta_cal", lambda v: v > 0)):
        options = {k: v for k, v in grid.items() if k.startswith(knob + "=") and keep(float(k.split("=")[1]))}
        allowed = {k: v for k, v in options.items() if v["ndcg@10"] >= 0.95 * reference}
        best = (max(allowed, key=lambda k: allowed[k]["debiased_ndcg@10"]) if allowed
                else max(options, key=lambda k: options[k]["ndcg@10"]))
        assert result["chosen"][family] == {knob: float(best.split("=")[1])}
    # the calibrated mix's T is fitted on validation, within the search's bounds, and predicts the targets better
    calibration = result["calibration"]
    assert len(calibration["temperature"]) == 1 and 0.05 <= calibration["temperature"][0] <= 20
    assert calibration["valid_nll"]["fitted"][0] <= calibration["valid_nll"]["t=1"][0]
    assert {p["value"] for p in result["curve"]["sft_mix_calibrated"]} == {0.05, 5.0}
    # each split's targets' training popularity, counted from the file: leave-one-out trains on all but the last two
    lines = [line.split()[1:] for line in (data / "Beauty.txt").read_text().splitlines()]
    counts = Counter(item for seq in lines for item in seq[:-2])
    for split_name, position in (("valid", -2), ("test", -1)):
        expected = [counts[seq[position]] for seq in lines]
        assert result["target_train_count"][split_name]["mean"] == round(sum(expected) / len(expected), 2)
    # the curve holds every test point of each knob; a strong penalty recommends less popular items than the
    # recipe, a strong popularity prior more popular ones
    points = {p["value"]: p for p in result["curve"]["sft_penalty"]}
    assert set(points) == {-0.5, -5.0}
    assert points[-5.0]["arp@10"] < result["sft"]["arp@10"] < result["curve"]["sft_pda"][0]["arp@10"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the LLM's log-probabilities are cached per seed and split: a second run reads them and agrees
    assert (out / "seed-42" / "causal" / "llm_log_probs_test.pt").is_file()
    again = run(args)
    assert again == result

    # each seed is kept as a small record; pooled from the record alone (no adapter, no cache) the result is the same
    record_path = out / "seed-42" / "causal" / "record.json.gz"
    causal_public = str(REPO / "benchmarks" / "causal_public.py")
    assert run([causal_public, "--records", str(record_path), "--plot", str(png)]) == result
    # a second seed pools user by user: the same record as seed 43 leaves every mean and interval as it was,
    # and lists each seed's figures
    record = records.read(record_path)
    assert len(record["targets"]["test"]) == result["users"] and record["calibration"]["temperature"] == \
        result["calibration"]["temperature"][0]
    twin = tmp_path / "seed-43.json.gz"
    records.write(twin, {**record, "seed": 43})
    pooled = run([causal_public, "--records", str(record_path), str(twin), "--plot", str(png)])
    assert pooled["seeds"] == [42, 43] and pooled["chosen"] == result["chosen"]
    for label in ("sft", "sft_mix", "sft_mix_calibrated"):
        assert pooled[label]["ndcg@10"] == result[label]["ndcg@10"]
        assert pooled[label]["per_seed"]["ndcg@10"] == 2 * result[label]["per_seed"]["ndcg@10"]
        if label != "sft":
            assert pooled[label]["relative_ci95"] == result[label]["relative_ci95"]
    # the order the records are given in does not matter (the bootstrap is seeded by the smallest seed)
    assert run([causal_public, "--records", str(twin), str(record_path), "--plot", str(png)]) == pooled
    # a seed both scored now and held by a record is refused before any scoring (the root has no seed 43 to score)
    proc = subprocess.run([sys.executable, causal_public, "--root", str(out), "--seeds", "43", "--records", str(twin)],
                          capture_output=True, text=True, cwd=REPO, check=False, env=ENV)
    assert proc.returncode == 2 and "seed(s) [43] are both given to --seeds and held by a --records file" in proc.stderr


def test_relative_change_is_taken_from_unrounded_means():
    """Near a +10% target the rows' four-digit figures would move a change by a third of a point: here
    0.0363 / 0.0338 - 1 = +7.40% where the means give +7.70%."""
    sft = {"ndcg@10": 0.056812, "snips_ndcg@10": 0.033751, "intervened_ndcg@10": 0.0}
    mix = {"ndcg@10": 0.054849, "snips_ndcg@10": 0.036349, "intervened_ndcg@10": 0.0341}
    assert causal_benchmark.relative_change(mix, sft) == {"ndcg@10": -0.0346, "debiased_ndcg@10": 0.077}
    assert causal_benchmark.relative_change(mix, sft, ("intervened_ndcg@10",)) == {"intervened_ndcg@10": None}


def test_records_pool_only_distinct_seeds_on_one_split_and_grid(tmp_path):
    """What a pool refuses, naming the record and what differs; the per-user ranks give back each user's NDCG."""
    hits = target_ranks([[3, 1, 2], [0, 1, 2], [2, 5, 4]], [1, 4, 4], k=3)
    assert hits == {"users": [0, 2], "ranks": [2, 3]}
    assert ndcg_from_ranks(hits, 3).tolist() == [1 / math.log2(3), 0.0, 0.5]
    setting = {"system": "sft", "knob": "gamma", "value": 0.0, "valid": {}, "test": {}, "test_hits": hits}
    base = {"dataset": "beauty", "seed": 42, "ips_clip": 100.0, "targets": {"valid": [0, 1, 2], "test": [1, 4, 4]},
            "train_popularity": [5, 4, 3, 2, 1, 0], "settings": [setting]}
    paths = []
    for name, record in (("a", base), ("b", {**base, "seed": 43})):
        paths.append(records.write(tmp_path / f"{name}.json.gz", record))
    assert records.read(paths[1])["seed"] == 43
    records.check_poolable([records.read(p) for p in paths], [str(p) for p in paths])
    cases = [({**base}, "seed 42 is already in the pool"),
             ({**base, "seed": 44, "targets": {"valid": [0, 1, 2], "test": [1, 4, 5]}}, "'targets' differs"),
             ({**base, "seed": 44, "settings": [{**setting, "value": -0.1}]}, "grid of settings differs")]
    for record, message in cases:
        with pytest.raises(SystemExit, match=message):
            records.check_poolable([base, record], ["a.json.gz", "b.json.gz"])
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match="broken.json.gz: not a causal_public record"):
        records.read(broken)
    records.write(broken, {**base, "settings": [{**setting, "test_hits": {"users": [3], "ranks": [1]}}]})
    with pytest.raises(SystemExit, match="past the 3 test users"):
        records.read(broken)


def test_causal_public_trains_a_training_time_recipe_like_sft_and_compares_it_user_by_user(tmp_path, tiny_model_dir):
    """--trained deconfounded: the recipe with inverse-popularity weights added, trained per seed into the seed's
    causal folder with SFT's config and SASRec, decoded over gamma, chosen by the same rule, compared with SFT's
    test rankings (paired intervals), its minutes reported beside SFT's."""
    data = write_sequences(tmp_path / "data")
    common = [f"data.path={data}", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32"]
    out = tmp_path / "public"
    run([str(REPO / "benchmarks" / "public.py"), "--dataset", "beauty", "--smoke", "--out", str(out), "--systems",
         "genrec", "--set", *common, "eval.users=null"])
    result = run([str(REPO / "benchmarks" / "causal_public.py"), "--root", str(out), "--seeds", "42", "--penalties",
                  "-0.5", "--gammas", "--mixes", "0.05", "--calibrated-mixes", "--trained", "deconfounded", "--trained-gammas", "0", "5",
                  "--smoke", "--plot", str(tmp_path / "tradeoff.png"), "--set", *common])
    trained = out / "seed-42" / "causal" / "deconfounded"
    assert (trained / "adapter" / "adapter_config.json").is_file()
    saved = (trained / "config.yaml").read_text()
    assert "target_weighting: inverse_popularity" in saved and "weight_power: 0.5" in saved
    assert str(out / "seed-42" / "sasrec" / "sasrec.pt") in saved  # SFT's SASRec: its item rows and ranking
    seconds = {name: json.loads((folder / "train_seconds.json").read_text())["seconds"]
               for name, folder in (("sft", out / "seed-42" / "genrec"), ("deconfounded", trained))}
    assert result["train_minutes"] == {name: [round(s / 60, 2)] for name, s in seconds.items()}
    grid = {k: v for k, v in result["valid_grid"].items() if k.startswith("deconfounded:")}
    assert set(grid) == {"deconfounded:gamma=0", "deconfounded:gamma=5"}
    reference = result["valid_grid"]["gamma=0"]["ndcg@10"]
    allowed = {k: v for k, v in grid.items() if v["ndcg@10"] >= 0.95 * reference}
    best = (max(allowed, key=lambda k: allowed[k]["debiased_ndcg@10"]) if allowed
            else max(grid, key=lambda k: grid[k]["ndcg@10"]))
    assert result["chosen"]["deconfounded"] == {"gamma": float(best.split("=")[1])}
    row = result["deconfounded"]
    assert 0 <= row["ndcg@10"] <= row["hit@10"] <= 1 and row["relative_ci95"]["debiased_ndcg@10"][0] <= \
        row["relative_ci95"]["debiased_ndcg@10"][1]
    points = {p["value"]: p for p in result["curve"]["deconfounded"]}
    assert set(points) == {0.0, 5.0} and points[5.0]["arp@10"] > points[0.0]["arp@10"]  # popularity added back
    assert "calibration" not in result and "sft_mix_calibrated" not in result  # --calibrated-mixes with none: off
    # its own scores, not SFT's: the cache sits in its folder
    assert (trained / "llm_log_probs_test.pt").is_file()


def test_kept_beauty_record_still_reads_and_its_user_ranks_give_its_metrics():
    """The records kept in the repository (benchmarks/results/causal_beauty/) must stay readable by the pool: each
    setting's per-user target ranks give back the test NDCG@10 and HR@10 that the record states."""
    kept = sorted((REPO / "benchmarks" / "results" / "causal_beauty").glob("seed-*.json.gz"))
    assert kept, "no kept record"
    read = [records.read(path) for path in kept]
    for path, record in zip(kept, read):
        assert path.name == f"seed-{record['seed']}.json.gz" and record["dataset"] == "beauty"
        n_users = len(record["targets"]["test"])
        assert n_users == 22363 and len(record["train_popularity"]) == 12101
        # the propensity weights the pool's bootstrap uses, on each test target
        weights = propensity_weights(np.asarray(record["train_popularity"]), record["ips_clip"])[record["targets"]["test"]]
        for setting in record["settings"]:
            ndcg = ndcg_from_ranks(setting["test_hits"], n_users)
            assert math.isclose(ndcg.mean(), setting["test"]["ndcg@10"], rel_tol=1e-9)
            assert math.isclose((weights * ndcg).sum() / weights.sum(), setting["test"]["snips_ndcg@10"], rel_tol=1e-9)
            assert math.isclose(len(setting["test_hits"]["users"]) / n_users, setting["test"]["hit@10"], rel_tol=1e-9)
    records.check_poolable(read, [str(p) for p in kept])
