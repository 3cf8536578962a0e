"""The recipes as a user runs them on the tiny model: `accelerate launch` with two processes, recommend
for a user and for titles, and clean errors on bad input. (Training and evaluation of every variant under
two processes: tests/test_multiprocess.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def launch(args: list[str], processes: int) -> subprocess.CompletedProcess:
    """docs/scaling.md's CPU command for several processes: accelerate's multi-process launcher (on a machine
    without GPUs it starts ``processes`` CPU processes over gloo; `--cpu` would start one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def python(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def trained(multiprocess_runs, tiny_model_dir, toy_data_dir):
    """The title recipe as trained by two processes (tests/multiprocess_driver.py), and its overrides."""
    run = Path(multiprocess_runs[1]["title_target"]["dir"])
    assert multiprocess_runs[1]["title_target"]["world_size"] == 2
    overrides = [f"run.output_dir={run}", f"data.path={toy_data_dir}", "data.dataset=toy", "data.max_history=5",
                 f"model.name_or_path={tiny_model_dir}", "model.dtype=float32", "decode.batch_users=3",
                 "decode.num_beams=20"]
    return run, overrides


def test_accelerate_launch_starts_two_processes_and_matches_one(trained, tmp_path):
    run, overrides = trained
    cfg = ["--config", "recipes/configs/ml100k/smollm2_lora.yaml", *overrides, f"run.checkpoint={run / 'adapter'}"]
    ok(launch(["recipes/evaluate.py", *cfg, f"run.output_dir={tmp_path}"], processes=2))
    two = json.loads((tmp_path / "eval_results.json").read_text())
    assert two["protocol"]["processes"] == 2
    one = json.loads((run / "eval" / "eval_results.json").read_text())  # torchrun's two processes, same users
    assert two["metrics"] == one["metrics"]
    m, p = two["metrics"], two["protocol"]
    for k in (1, 5, 10, 20):
        assert {f"hit@{k}", f"ndcg@{k}", f"mrr@{k}"} <= set(m)
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0 and "coverage@10" in m
    assert p["users"] == 24 and p["catalog_size"] == 30 and p["adapter"].endswith("adapter")
    assert {"split", "max_history", "seen_items", "decoding", "model", "seed"} <= set(p)
    assert "popularity" in two["baselines"]


def test_recommend_for_user_and_for_titles(trained, tmp_path):
    run, overrides = trained
    cfg = ["recipes/recommend.py", "--config", "recipes/configs/ml100k/smollm2_lora.yaml", *overrides,
           f"run.checkpoint={run / 'adapter'}", f"run.output_dir={tmp_path}"]
    ok(python(cfg + ["recommend.user_id=3", "recommend.k=5"]))
    rows = [json.loads(x) for x in (tmp_path / "recommendations.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert set(rows[0]) == {"user_id", "rank", "item_id", "title", "score"}
    proc = ok(python(cfg + ["recommend.history=Love Blue (1957)|City (1971)", "recommend.k=3"]))
    rows = [json.loads(x) for x in (tmp_path / "recommendations.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not {"Love Blue (1957)", "City (1971)"} & {r["title"] for r in rows}
    assert "top-3" in proc.stdout


@pytest.mark.parametrize("extra, message", [
    (["recommend.user_id=nobody"], "unknown user 'nobody'"),
    (["recommend.history=Love Blu (1957)"], "close matches: 'Love Blue (1957)'"),
    (["recommend.k=5", "train.lrr=1"], "did you mean 'lr'"),
    (["model.quantization=4bit+8bit"], "must be one of none, 4bit, 8bit"),
])
def test_recommend_bad_input_is_a_clear_error(trained, tmp_path, extra, message):
    run, overrides = trained
    out = tmp_path / "out"
    proc = python(["recipes/recommend.py", "--config", "recipes/configs/ml100k/smollm2_lora.yaml", *overrides,
                   f"run.checkpoint={run / 'adapter'}", f"run.output_dir={out}", *extra])
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "Loading weights" not in proc.stderr  # rejected before the model loads
    assert not out.exists()


def test_evaluate_without_adapter_points_to_the_fix(tiny_model_dir, toy_data_dir, tmp_path):
    proc = python(["recipes/evaluate.py", f"data.path={toy_data_dir}", "data.dataset=toy",
                   f"model.name_or_path={tiny_model_dir}", f"run.output_dir={tmp_path / 'none'}"])
    assert proc.returncode == 2 and "run.checkpoint=base" in proc.stderr
