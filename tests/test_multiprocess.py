"""Two real processes (torchrun, DDP over gloo): every recipe variant trains and evaluates, gradients are
synchronised (two processes = one process accumulating their two batches), a resumed two-process run equals
an uninterrupted one, and sharded evaluation ranks exactly as one process does.

The runs come from one launch of tests/multiprocess_driver.py (the ``multiprocess_runs`` fixture); each
test asserts the world size its run had."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_recipes import load_recipe
from multiprocess_driver import EXACT, VARIANTS, tiny
from safetensors.torch import load_file


def run_of(multiprocess_runs, name: str) -> Path:
    _, summary = multiprocess_runs
    record = summary[name]
    assert "error" not in record, record["error"]
    assert record["world_size"] == 2 and record["processes"] == 2  # two processes really ran it
    return Path(record["dir"])


def training_rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_and_evaluates_under_two_processes(multiprocess_runs, name):
    run = run_of(multiprocess_runs, name)
    rows = training_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and {r["processes"] for r in rows} == {2}
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows)  # finite, positive
    info = json.loads((run / "adapter" / "genrec.json").read_text())
    assert info["processes"] == 2 and info["step"] == 3
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    assert results["protocol"]["processes"] == 2
    if name == "pointwise":
        assert 0.0 <= results["metrics"]["auc"] <= 1.0 and results["metrics"]["examples"] > 0
        return
    m = results["metrics"]
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0
    assert results["protocol"]["users"] == 24  # every user, sharded over both processes and gathered
    rankings = [json.loads(x) for x in (run / "eval" / "rankings.jsonl").read_text().splitlines()]
    assert len(rankings) == 24 and all(len(set(r["items"])) == len(r["items"]) == 20 for r in rankings)
    if name == "ensemble":
        assert results["protocol"]["adapter_members"] == 2
        assert json.loads((run / "adapter" / "ensemble.json").read_text())["members"] == ["members/1"]


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_two_processes_train_as_one_process_accumulating_both_batches(multiprocess_runs, tiny_model_dir,
                                                                       toy_data_dir, tmp_path):
    """DDP averages the two processes' gradients: the same update as one process over both batches with
    train.grad_accum=2 (process r takes batches r, r+2, ...). Unsynchronised gradients would differ."""
    two = run_of(multiprocess_runs, "exact")
    config, overrides = EXACT
    one = tmp_path / "one"
    load_recipe("finetune").main(["--config", config, *tiny(tiny_model_dir, toy_data_dir, one), *overrides,
                                  "train.grad_accum=2"])
    assert [r["loss"] for r in training_rows(one)] == pytest.approx([r["loss"] for r in training_rows(two)], abs=1e-5)
    mine, theirs = adapter_tensors(one / "adapter"), adapter_tensors(two / "adapter")
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6)
    assert all(mine[k].abs().max() > 0 for k in mine if "lora_B" in k)  # every adapter moved from its zero init


def test_resume_under_two_processes_equals_an_uninterrupted_run(multiprocess_runs):
    uninterrupted, resumed = run_of(multiprocess_runs, "exact"), run_of(multiprocess_runs, "resumed")
    a, b = adapter_tensors(uninterrupted / "adapter"), adapter_tensors(resumed / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in training_rows(resumed)] == [1, 2, 3, 4]  # one row per step, none twice
    assert [r["loss"] for r in training_rows(resumed)] == [r["loss"] for r in training_rows(uninterrupted)]
    state = resumed / "checkpoints" / "step-000002" / "genrec_state"
    assert (state / "rng.pt").is_file() and (state / "rng-1.pt").is_file()  # each process's own random streams


def test_a_checkpoint_of_two_processes_refuses_to_resume_under_one(multiprocess_runs, tiny_model_dir, toy_data_dir,
                                                                   tmp_path):
    import shutil

    from genrec.errors import CheckpointError

    resumed = run_of(multiprocess_runs, "resumed")
    copy = tmp_path / "copy"
    shutil.copytree(resumed / "checkpoints", copy / "checkpoints")
    config, overrides = EXACT
    with pytest.raises(CheckpointError, match="written by a run of 2 process"):
        load_recipe("finetune").main(["--config", config, *tiny(tiny_model_dir, toy_data_dir, copy), *overrides,
                                      "train.save_every=2", "run.resume=true"])


@pytest.mark.parametrize("name", ["title_target", "atomic_sequence", "semantic", "ensemble", "reason"])
def test_evaluation_over_two_processes_ranks_exactly_like_one(multiprocess_runs, name, tiny_model_dir, toy_data_dir,
                                                              tmp_path):
    """Users are batched before they are sharded, so each user is decoded in the same batch either way (one
    thread per process in both, as the float sums then run in the same order)."""
    run = run_of(multiprocess_runs, name)
    config, overrides = VARIANTS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = load_recipe("evaluate").main(["--config", config, *tiny(tiny_model_dir, toy_data_dir, run),
                                            *overrides, f"run.checkpoint={run / 'adapter'}",
                                            f"run.output_dir={tmp_path}"])
    finally:
        torch.set_num_threads(threads)
    two = json.loads((run / "eval" / "eval_results.json").read_text())
    assert one["protocol"]["processes"] == 1 and two["protocol"]["processes"] == 2
    assert one["metrics"] == two["metrics"]
    assert (tmp_path / "rankings.jsonl").read_text() == (run / "eval" / "rankings.jsonl").read_text()


def test_a_killed_two_process_evaluation_resumes_from_both_partial_files(multiprocess_runs):
    """Each process streamed its first batch before the kill; the second launch reads both files (before
    either process writes again), ranks only the rest, and the lines it took from disk are the ones an
    uninterrupted two-process evaluation wrote."""
    run = run_of(multiprocess_runs, "resumed_eval")
    _, summary = multiprocess_runs
    record = summary["resumed_eval"]
    assert record["partial_files"] == 2 and record["partial_lines"] > 0
    results = json.loads((run / "eval_results.json").read_text())
    assert results["protocol"]["processes"] == 2 and results["timing"]["resumed"] == record["partial_lines"]
    assert not list(run.glob("rankings.partial-*.jsonl"))
    lines = [json.loads(x) for x in (run / "rankings.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and all(len(set(x["items"])) == len(x["items"]) == 20 for x in lines)
    whole = {json.loads(x)["user_id"]: x for x in
             (run.parent / "exact" / "eval" / "rankings.jsonl").read_text().splitlines()}
    mine = {json.loads(x)["user_id"]: x for x in (run / "rankings.jsonl").read_text().splitlines()}
    assert mine.keys() == whole.keys()
    same = sum(mine[u] == whole[u] for u in whole)
    assert same >= record["partial_lines"]  # at least every case taken from disk is exactly as first ranked


@pytest.fixture(scope="module")
def fsdp_results(tiny_model_dir, toy_data_dir, tmp_path_factory) -> dict:
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                           str(repo / "tests" / "fsdp_driver.py"), "--out", str(out), "--model", str(tiny_model_dir),
                           "--data", str(toy_data_dir)], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / "fsdp.json").read_text())


def test_fsdp2_training_step_equals_the_unsharded_one(fsdp_results):
    """FSDP2 over 2 CPU processes (tests/fsdp_driver.py): the loss, and the adapter after a step as
    genrec.training.sharding gathers it for saving, equal the same model unsharded."""
    r = fsdp_results
    assert r["world_size"] == 2
    assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-6)
    assert r["adapter_keys_equal"] and r["adapter_max_diff"] < 1e-6 and r["adapter_moved"] > 1e-4


def test_fsdp2_optimizer_state_round_trips_and_validation_decodes_like_unsharded(fsdp_results):
    r = fsdp_results
    assert r["after_reload_max_diff"] < 1e-6  # a step after reloading the gathered state = an uninterrupted step
    assert r["rankings_equal"] and r["users"] == 24  # every process decoding every user, in step
