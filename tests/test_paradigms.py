"""Training paradigms beyond next-item SFT: pointwise yes/no (AUC), softmax-DPO against a frozen
reference, and incremental updates across a time cut — hand-computed values and tiny end-to-end runs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers_recipes import load_recipe

from genrec.config import load_config, parse_time
from genrec.data import load_split
from genrec.data.splits import Example, sequence_windows, sliding_windows
from genrec.errors import CheckpointError, ConfigError, DataError, TemplateError
from genrec.evaluation.protocol import evaluation_users
from genrec.paradigms.pointwise import (
    answer_token_ids,
    balanced_sample,
    evaluation_examples,
    pointwise_examples,
    preference_scores,
    roc_auc,
)
from genrec.paradigms.preference import sample_negatives, softmax_dpo_loss
from genrec.prompts.template import PromptTemplate
from genrec.recommender import prepare

REPO = Path(__file__).resolve().parents[1]
CUT = 1045.0  # toy timestamps run 1000 + 10 * position: a cut in the middle of every history


@pytest.fixture(scope="module")
def toy_split(toy_data_dir):
    return load_split(load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy"]))


# ---- time cut ----------------------------------------------------------------------------------------------

def test_parse_time_reads_dates_as_utc_and_numbers_as_seconds():
    assert parse_time("1998-01-01") == 883612800.0
    assert parse_time("883612800") == 883612800.0
    assert parse_time(None) is None
    with pytest.raises(DataError, match="data.time_cut"):
        parse_time("next tuesday-ish")


def test_period_needs_a_cut_and_a_valid_one(toy_data_dir):
    base = [f"data.path={toy_data_dir}", "data.dataset=toy"]
    with pytest.raises(ConfigError, match="data.time_cut"):
        load_config(None, base + ["data.train_period=after"])
    with pytest.raises(ConfigError, match="data.time_cut"):
        load_config(None, base + ["eval.period=after"])
    with pytest.raises(DataError, match="data.time_cut"):
        load_config(None, base + ["data.train_period=after", "data.time_cut=soon"])


@pytest.mark.parametrize("objective", ["target", "sequence"])
def test_before_and_after_the_cut_partition_the_training_targets(toy_split, objective):
    def counted(period):
        out = set()
        if objective == "target":
            for ex in sliding_windows(toy_split, 5, 1, None, CUT, period):  # toy users never repeat an item
                out.add((ex.user_id, toy_split.train_part(ex.user_id).index(ex.target)))
            return out
        for ex in sequence_windows(toy_split, 3, 2, CUT, period):
            part = toy_split.train_part(ex.user_id)
            seq = list(ex.sequence)
            start = next(s for s in range(len(part)) if part[s: s + len(seq)] == seq)
            out |= {(ex.user_id, start + i) for i in range(ex.sequence_from, len(seq))}
        return out

    everything, before, after = counted("all"), counted("before"), counted("after")
    assert before and after
    assert before | after == everything and not before & after
    for user, pos in after:  # newer targets are at or after the cut; older ones before it
        assert toy_split.times[user][pos] >= CUT
    for user, pos in before:
        assert toy_split.times[user][pos] < CUT


def test_newer_targets_keep_older_items_as_context(toy_split):
    after = sliding_windows(toy_split, 5, 1, None, CUT, "after")
    user = after[0].user_id
    first_new = next(i for i, t in enumerate(toy_split.times[user]) if t >= CUT)
    ex = next(e for e in after if e.user_id == user)
    assert len(ex.history) == min(5, first_new) and ex.history == tuple(toy_split.train_part(user)[max(0, first_new - 5):first_new])


def test_evaluation_users_of_the_newer_period(toy_split):
    users = evaluation_users(toy_split, None, 0, after=CUT + 30)
    assert users and set(users) < set(toy_split.eval_users)
    assert all(toy_split.target_time(u, "test") >= CUT + 30 for u in users)
    left_out = set(toy_split.eval_users) - set(users)
    assert all(toy_split.target_time(u, "test") < CUT + 30 for u in left_out)
    with pytest.raises(DataError, match="time_cut"):
        evaluation_users(toy_split, None, 0, after=10 ** 9)


# ---- pointwise ---------------------------------------------------------------------------------------------

def test_roc_auc_equals_the_pairwise_definition_with_ties():
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, -1.0, 0.4]
    labels = [False, True, False, True, False, False, True]
    pairs = [(p, n) for p, n in itertools.product(range(7), repeat=2) if labels[p] and not labels[n]]
    expected = sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert roc_auc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    with pytest.raises(DataError, match="both likes and dislikes"):
        roc_auc([1, 2], [True, True])


def test_pointwise_examples_are_labelled_by_rating(toy_split):
    examples = pointwise_examples(toy_split, 4, 3.0)
    assert examples
    for ex in examples[:50]:
        assert ex.label == (toy_split.ratings[ex.user_id][ex.target] > 3.0)
        part = toy_split.train_part(ex.user_id)
        t = part.index(ex.target)
        assert ex.history == tuple(part[max(0, t - 4):t])
    sample = balanced_sample(examples, 16, seed=3)
    assert len(sample) == 16 and sum(ex.label for ex in sample) == 8
    assert sample == balanced_sample(examples, 16, seed=3) and sample != balanced_sample(examples, 16, seed=4)
    held_out = evaluation_examples(toy_split, toy_split.eval_users, "test", 4, 3.0)
    assert [ex.target for ex in held_out] == [toy_split.sequences[u][-1] for u in toy_split.eval_users]


@pytest.mark.parametrize("text, message", [
    ("name: x\nprompt: 'ask about {{ target }}'\nanswers: [yes, no]\ncompletion: '{{ answer }}'", "two different"),
    ("name: x\nprompt: 'ask about {{ target }}'\nanswers: ['Yes']\ncompletion: '{{ answer }}'", "two different"),
    ("name: x\nprompt: 'ask about nothing'\nanswers: ['Yes', 'No']\ncompletion: '{{ answer }}'", "candidate"),
    ("name: x\nprompt: 'ask about {{ target }}'\nanswers: ['Yes', 'No']\ncompletion: 'Yes'", "both answers"),
])
def test_bad_pointwise_templates_are_named(toy_split, text, message):
    with pytest.raises(TemplateError, match=message):
        PromptTemplate("bad.yaml", text).check(toy_split.catalog, "title")


@pytest.fixture(scope="module")
def pointwise(tiny_model_dir, toy_data_dir):
    from genrec.model.loading import load_base_model

    cfg = load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy", "data.max_history=4",
                             f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                             f"prompt.template={REPO / 'prompts' / 'pointwise_like.yaml'}"])
    setup = prepare(cfg)
    return setup, load_base_model(cfg.model, setup.model_path).eval()


def test_answer_tokens_come_from_the_tokenizer(pointwise):
    setup, _ = pointwise
    yes, no = answer_token_ids(setup.encoder)
    assert yes == setup.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    assert no == setup.tokenizer("No", add_special_tokens=False)["input_ids"][0]
    assert setup.index.num_items == 2  # the trie holds the answers, not the catalog
    ex = setup.training_examples()[0]
    enc = setup.encoder.encode(ex)
    labelled = [t for t in enc["labels"] if t != -100]
    assert labelled[0] == (yes if ex.label else no) and labelled[-1] == setup.encoder.end_id


def test_preference_scores_equal_one_prompt_at_a_time(pointwise):
    setup, model = pointwise
    yes, no = answer_token_ids(setup.encoder)
    examples = setup.training_examples()[:5]
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    batched = preference_scores(model, prompts, yes, no, setup.tokenizer.pad_token_id, batch_size=3)
    for prompt, got in zip(prompts, batched):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
        assert got == pytest.approx((logp[yes] - logp[no]).item(), abs=1e-4)


def test_pointwise_finetune_and_evaluate(tiny_overrides):
    overrides = tiny_overrides + [f"prompt.template={REPO / 'prompts' / 'pointwise_like.yaml'}", "train.examples=16",
                                  "train.epochs=2", "train.lr=1e-3"]
    load_recipe("finetune").main(overrides)
    run = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run.output_dir=")))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_auc" in r for r in logged)
    results = load_recipe("evaluate").main(overrides)
    m = results["metrics"]
    assert 0.0 <= m["auc"] <= 1.0 and m["examples"] > 0 and 0 < m["like_rate"] < 1
    assert set(results["baselines"]) == {"user_mean_rating", "item_mean_rating"}
    scores = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == m["examples"]
    assert roc_auc([s["score"] for s in scores], [s["label"] for s in scores]) == pytest.approx(m["auc"], abs=1e-3)
    assert json.loads((run / "eval_results.json").read_text())["protocol"]["training_examples"] == 16


def test_few_shot_sample_size(tiny_overrides, toy_data_dir):
    cfg = load_config(None, tiny_overrides + [f"prompt.template={REPO / 'prompts' / 'pointwise_like.yaml'}",
                                              "train.examples=16"])
    examples = prepare(cfg).training_examples()
    assert len(examples) == 16 and sum(ex.label for ex in examples) == 8


# ---- softmax-DPO -------------------------------------------------------------------------------------------

def test_softmax_dpo_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    reference = torch.log_softmax(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), -1)[:, [0, 2, 3]]  # positive 0, negatives 2, 3
    targets, negatives = torch.tensor([0]), torch.tensor([[2, 3]])
    logp = torch.log_softmax(logits, -1)[0]
    r = logp[[0, 2, 3]] - reference[0]
    beta = 0.5
    expected = -torch.nn.functional.logsigmoid(-torch.log(torch.exp(beta * (r[1] - r[0])) + torch.exp(beta * (r[2] - r[0]))))
    assert softmax_dpo_loss(logits, targets, negatives, reference, beta).item() == pytest.approx(expected.item(), abs=1e-6)
    # policy == reference: every margin is 0, the loss is log(1 + n)
    same = torch.log_softmax(logits, -1)[:, [0, 2, 3]]
    assert softmax_dpo_loss(logits, targets, negatives, same, 1.0).item() == pytest.approx(math.log(3), abs=1e-6)
    # its gradient raises the positive and lowers the negatives
    x = logits.clone().requires_grad_(True)
    softmax_dpo_loss(x, targets, negatives, same, 1.0).backward()
    assert x.grad[0, 0] < 0 and x.grad[0, 2] > 0 and x.grad[0, 3] > 0


def test_negatives_avoid_the_window_and_are_seeded():
    window = [0, 3, 5, 7]
    negs = sample_negatives(window, positives=6, n=4, num_items=12, seed=1, row=9)
    assert negs.shape == (6, 4)
    assert not set(negs.flatten().tolist()) & set(window)
    assert all(len(set(r)) == 4 for r in negs.tolist())
    assert torch.equal(negs, sample_negatives(window, 6, 4, 12, seed=1, row=9))
    assert not torch.equal(negs, sample_negatives(window, 6, 4, 12, seed=1, row=10))


@pytest.mark.parametrize("override, message", [
    ("items.identifier=title", "atomic"),
    ("train.init_adapter=null", "init_adapter"),
    ("train.negatives=0", "negatives"),
    ("train.counterfactual_alpha=0.5", "counterfactual_alpha"),  # a cross-entropy term, which S-DPO replaces
])
def test_bad_dpo_settings_are_named(toy_data_dir, override, message):
    base = [f"data.path={toy_data_dir}", "data.dataset=toy", "items.identifier=atomic", "train.loss=softmax_dpo",
            "train.init_adapter=somewhere"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, base + [override])


def _atomic(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("prompt.template=")] + [
        f"prompt.template={REPO / 'prompts' / 'next_item_atomic.yaml'}", "prompt.chat=off", "items.identifier=atomic",
        "train.objective=sequence", "adapter.dropout=0", "train.epochs=1", "train.lr=5e-3"]


def test_softmax_dpo_starts_at_its_reference_and_moves_away(tiny_overrides, tmp_path):
    sft = _atomic(tiny_overrides)
    load_recipe("finetune").main(sft)
    sft_adapter = tmp_path / "run" / "adapter"
    dpo_dir = tmp_path / "dpo"
    dpo = [o for o in sft if not o.startswith("run.output_dir=")] + [
        f"run.output_dir={dpo_dir}", f"train.init_adapter={sft_adapter}", "train.loss=softmax_dpo",
        "train.negatives=3", "train.epochs=4", "train.lr=1e-3"]
    load_recipe("finetune").main(dpo)
    logged = [json.loads(line) for line in (dpo_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # the first step's loss is computed before any update: policy == reference, loss == log(1 + negatives)
    assert logged[0]["loss"] == pytest.approx(math.log(4), abs=2e-3)
    assert sum(r["loss"] for r in logged[-4:]) < sum(r["loss"] for r in logged[:4])  # it learns to prefer the positive
    results = load_recipe("evaluate").main(dpo)
    assert results["metrics"]["valid_item_rate"] == 1.0


# ---- incremental update ------------------------------------------------------------------------------------

def test_incremental_update_starts_from_the_stale_adapter(tiny_overrides, tmp_path):
    from safetensors.torch import load_file

    stale = _atomic(tiny_overrides) + [f"data.time_cut={CUT}", "data.train_period=before"]
    load_recipe("finetune").main(stale)
    stale_adapter = tmp_path / "run" / "adapter"
    # lr 0: the update leaves the weights it started from
    frozen_dir = tmp_path / "frozen"
    frozen = [o for o in stale if not o.startswith(("run.output_dir=", "data.train_period=", "train.lr="))] + [
        f"run.output_dir={frozen_dir}", "data.train_period=after", f"train.init_adapter={stale_adapter}",
        "train.lr=0", "train.embedding_lr=0", "eval.period=after"]
    load_recipe("finetune").main(frozen)
    a, b = load_file(str(stale_adapter / "adapter_model.safetensors")), load_file(str(frozen_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a real update changes them, and is evaluated on the newer period only
    update = [o for o in frozen if not o.startswith(("run.output_dir=", "train.lr=", "train.embedding_lr="))] + [
        f"run.output_dir={tmp_path / 'update'}", "train.lr=5e-3"]
    load_recipe("finetune").main(update)
    c = load_file(str(tmp_path / "update" / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)
    results = load_recipe("evaluate").main(update)
    split = load_split(load_config(None, update))
    assert results["protocol"]["users"] == len(evaluation_users(split, None, 0, after=CUT))
    assert results["protocol"]["users"] < len(split.eval_users)


def test_init_adapter_must_match(tiny_overrides, tmp_path):
    stale = _atomic(tiny_overrides)
    load_recipe("finetune").main(stale)
    other = [o for o in stale if not o.startswith("run.output_dir=")] + [
        f"run.output_dir={tmp_path / 'other'}", f"train.init_adapter={tmp_path / 'run' / 'adapter'}"]
    with pytest.raises(ConfigError, match="adapter.r=8"):
        load_recipe("finetune").main(other + ["adapter.r=8"])
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors"):
        load_recipe("finetune").main(other[:-1] + [f"train.init_adapter={tmp_path}"])


# ---- multitask ---------------------------------------------------------------------------------------------

def test_masked_item_examples_hide_a_training_item(toy_split):
    from genrec.paradigms.multitask import item_from_text_examples, masked_item_examples

    examples = masked_item_examples(toy_split, 0.5, 4, seed=0)
    interactions = sum(len(toy_split.train_part(u)) for u in toy_split.sequences)
    assert len(examples) == round(0.5 * interactions)
    for ex in examples:
        part = toy_split.train_part(ex.user_id)
        assert ex.task == "masked_item" and len(ex.history) <= 4 and ex.history[ex.masked] == ex.target
        start = part.index(ex.history[0])
        assert tuple(part[start: start + len(ex.history)]) == ex.history  # a contiguous window of the training part
    assert examples == masked_item_examples(toy_split, 0.5, 4, seed=0)
    texts = item_from_text_examples(toy_split, 1.5, seed=0)
    assert len(texts) == round(1.5 * len(toy_split.catalog)) and {ex.task for ex in texts} == {"item_from_text"}


def test_masked_item_prompt_must_hide_the_item(toy_split):
    leaky = ("name: x\nprompt: 'h:{{ history | join(\"\") }}'\ncompletion: '{{ target }}'\n"
             "tasks:\n  masked_item: 'h:{{ history | join(\"\") }} hidden:'\n")
    with pytest.raises(TemplateError, match="shows the hidden item"):
        PromptTemplate("leaky.yaml", leaky).check(toy_split.catalog, "atomic")
    with pytest.raises(TemplateError, match="unknown task 'masked'"):
        PromptTemplate("bad.yaml", "name: x\nprompt: p\ncompletion: '{{ target }}'\ntasks:\n  masked: q\n")


def test_multitask_examples_train_the_item_token_only(tiny_overrides):
    overrides = _atomic(tiny_overrides) + [f"prompt.template={REPO / 'prompts' / 'next_item_atomic_multitask.yaml'}",
                                           "train.mix_masked_item=0.2", "train.mix_item_from_text=1", "train.mask_window=4",
                                           "train.task_weight=0.1"]
    setup = prepare(load_config(None, overrides))
    examples = setup.training_examples()
    tasks = [ex.task for ex in examples]
    assert tasks.count("item_from_text") == len(setup.split.catalog) and tasks.count("masked_item") > 0
    token_of = dict(zip(range(len(setup.split.catalog)), setup.item_tokens))
    for ex in [e for e in examples if e.task][:20]:
        enc = setup.encoder.encode(ex)
        assert [t for t in enc["labels"] if t != -100] == [token_of[ex.target]]
        if ex.task == "masked_item":  # the hidden item's token is not in the prompt (unless it repeats)
            prompt = enc["input_ids"][:-1]
            assert token_of[ex.target] not in prompt
    load_recipe("finetune").main(overrides)  # trains with the mixed set
    with pytest.raises(ConfigError, match="tasks: masked_item"):
        prepare(load_config(None, _atomic(tiny_overrides) + ["train.mix_masked_item=0.2"])).training_examples()


# ---- the benchmark -----------------------------------------------------------------------------------------

def test_paradigms_benchmark_runs_every_part(tiny_overrides, tmp_path):
    import os
    import subprocess
    import sys

    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "prompt.template="))]
    overrides += ["train.max_steps=2", f"data.time_cut={CUT}", "train.mask_window=4", "train.eval_users=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "paradigms.py"), "--out", str(tmp_path / "p"), "--shots", "8", "16",
           "--set", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 <= result["pointwise"]["auc"] <= 1 and set(result["pointwise"]["shots"]) == {"8", "16"}
    assert result["pointwise"]["auc"] == result["pointwise"]["shots"]["16"]["auc"]
    for key in ("sft", "contrastive", "multitask", "next_item_only", "stale", "incremental", "retrained"):
        assert 0 <= result[key]["ndcg@10"] <= 1
    # the newer period: fewer users than every test user, the same for the three incremental rows
    everyone = json.loads((tmp_path / "p" / "sft" / "eval_results.json").read_text())["protocol"]["users"]
    assert result["stale"]["users"] == result["incremental"]["users"] == result["retrained"]["users"] < everyone
    # the contrastive run started from sft_init and measured against it
    config = yaml.safe_load((tmp_path / "p" / "contrastive" / "config.yaml").read_text())
    assert config["train"]["loss"] == "softmax_dpo" and config["train"]["init_adapter"].endswith("sft_init/adapter")



def test_recommend_refuses_a_pointwise_template(tiny_overrides):
    overrides = tiny_overrides + [f"prompt.template={REPO / 'prompts' / 'pointwise_like.yaml'}", "run.checkpoint=base",
                                  "recommend.user_id=1"]
    with pytest.raises(ConfigError, match="pointwise"):
        load_recipe("recommend").main(overrides)


def test_rating_baselines_use_training_ratings_only():
    from genrec.data.catalog import Catalog
    from genrec.data.splits import Split
    from genrec.paradigms.pointwise import rating_baselines

    catalog = Catalog.build([str(i) for i in range(6)], None, "{item_id}", "item_{item_id}")
    # a: trains on 0, 1 (rated 5, 4) then valid 2, test 3; b: trains on 0, 2 (rated 1, 2) then valid 4, test 5
    seqs = {"a": [0, 1, 2, 3], "b": [0, 2, 4, 5]}
    ratings = {"a": {0: 5, 1: 4, 2: 1, 3: 1}, "b": {0: 1, 2: 2, 4: 5, 5: 5}}
    split = Split(catalog, seqs, ratings)
    examples = [Example("a", (0, 1, 2), 3, label=False), Example("b", (0, 2, 4), 5, label=True)]
    got = rating_baselines(split, examples)
    # user means 4.5 (a) vs 1.5 (b): the liked example scores lower -> AUC 0; the test items were never
    # trained on (both get the overall mean 3.0): a tie -> 0.5. The held-out ratings (1, 5) are never read.
    assert got == {"user_mean_rating": 0.0, "item_mean_rating": 0.5}


def test_task_examples_are_weighted_by_task_weight():
    from genrec.paradigms.multitask import label_weights

    labels = [-100, -100, 7]
    assert label_weights(labels, None, "masked_item", 0.1) == [0.0, 0.0, 0.1]
    assert label_weights(labels, None, None, 0.1) == [0.0, 0.0, 1.0]  # next-item rows keep their weight
    assert label_weights(labels, [0.0, 0.0, 2.0], "item_from_text", 0.5) == [0.0, 0.0, 1.0]
