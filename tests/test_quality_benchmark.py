"""benchmarks/quality.py end to end on the tiny model and toy data: every system trained, then reloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_quality(tmp_path: Path, overrides: list[str], *flags: str, seeds: tuple[str, ...] = ("1", "2")) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--seeds", *seeds, "--out", str(tmp_path / "q"),
           "--sasrec-config", str(REPO / "recipes" / "configs" / "ml100k" / "sasrec.yaml"), *flags, "--set", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_quality_benchmark_trains_each_system_per_seed_then_reloads(tiny_overrides, tmp_path):
    overrides = [o for o in tiny_overrides if not o.startswith("run.output_dir=")]
    overrides += ["train.max_steps=2", "sasrec.epochs=2", "sasrec.hidden=16", "sasrec.inner=32"]
    first = run_quality(tmp_path, overrides, "--genrec-config", str(REPO / "recipes" / "configs" / "ml100k" /
                                                                    "smollm2_lora_demo.yaml"))
    llm = json.loads((tmp_path / "q" / "seed-1" / "genrec" / "eval_results.json").read_text())
    assert first["users"] == llm["protocol"]["users"] > 0
    for system in ("genrec", "sasrec", "popularity"):
        for m in ("hit@10", "ndcg@10", "mrr@10"):
            assert 0.0 <= first[system][m] <= 1.0 and first[system][f"{m}_std"] >= 0.0
    # the summary is the mean over the two seeds' eval_results.json
    per_seed = [json.loads((tmp_path / "q" / f"seed-{s}" / "sasrec" / "eval_results.json").read_text())["metrics"]
                for s in (1, 2)]
    assert first["sasrec"]["ndcg@10"] == round((per_seed[0]["ndcg@10"] + per_seed[1]["ndcg@10"]) / 2, 4)
    assert first["seeds"] == [1, 2] and first["train_minutes"]["genrec"] > 0
    adapter = tmp_path / "q" / "seed-1" / "genrec" / "adapter" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    # second call loads what exists: same figures, nothing retrained
    again = run_quality(tmp_path, overrides, "--genrec-config", str(REPO / "recipes" / "configs" / "ml100k" /
                                                                    "smollm2_lora_demo.yaml"))
    assert again == first
    assert adapter.stat().st_mtime_ns == stamp


def test_quality_benchmark_reports_an_ensemble_and_its_first_member(tiny_overrides, tmp_path):
    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "prompt.template="))]
    overrides += [f"prompt.template={REPO / 'prompts' / 'next_item_atomic.yaml'}",
                  "train.max_steps=2", "sasrec.epochs=2", "sasrec.hidden=16", "sasrec.inner=32"]
    result = run_quality(tmp_path, overrides, seeds=("1",))  # the default genrec config: the ensemble recipe
    seed = tmp_path / "q" / "seed-1"
    both = json.loads((seed / "genrec" / "eval_results.json").read_text())
    first = json.loads((seed / "genrec_single" / "eval_results.json").read_text())
    assert both["protocol"]["adapter_members"] == 3 and first["protocol"]["adapter_members"] == 1
    assert result["genrec"]["ndcg@10"] == round(both["metrics"]["ndcg@10"], 4)
    assert result["genrec_single"]["ndcg@10"] == round(first["metrics"]["ndcg@10"], 4)
    assert (seed / "genrec" / "members" / "2" / "adapter" / "adapter_model.safetensors").is_file()
    # benchmarks/ensembles.py recomputes member 0 and SASRec from their log-probabilities: the same figures
    cmd = [sys.executable, str(REPO / "benchmarks" / "ensembles.py"), "--root", str(tmp_path / "q"), "--seeds", "1",
           "--genrec-config", str(REPO / "recipes" / "configs" / "ml100k" / "smollm2_atomic_ensemble.yaml"),
           "--sasrec-config", str(REPO / "recipes" / "configs" / "ml100k" / "sasrec.yaml"),
           "--sasrec-weights", "0", "10000", "--set", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    combos = json.loads(proc.stdout.strip().splitlines()[-1])
    assert combos["users"] == first["protocol"]["users"]
    assert combos["genrec"]["test"]["1"]["ndcg@10"] == round(first["metrics"]["ndcg@10"], 4)
    sas = json.loads((seed / "sasrec" / "eval_results.json").read_text())["metrics"]
    assert combos["sasrec"]["test"]["1"]["ndcg@10"] == round(sas["ndcg@10"], 4)
    # the product with the seed's SASRec: w = 0 is the LLM alone, a huge w SASRec's ranking
    for split in ("valid", "test"):
        assert combos["genrec+sasrec"][split]["1 w=0.0"] == combos["genrec"][split]["1"]
        assert combos["genrec+sasrec"][split]["1 w=10000.0"] == combos["sasrec"][split]["1"]
