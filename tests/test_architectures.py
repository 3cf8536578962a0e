"""Architectures besides Llama (tiny random Qwen2, Mistral and Gemma built from their configs): each trains
and decodes titles and atomic ids under the trie, its output-layer shortcut equals its own logits, the
shared-prefix attention equals the plain cache, and a chat template that refuses a system turn (Gemma's)
still gets the template's system text."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHITECTURES, REPO, build_tiny_model
from helpers_recipes import load_recipe


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {arch: build_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch) for arch in ARCHITECTURES}


def overrides(model_dir, data_dir, out, *extra):
    return [f"run.output_dir={out}", f"data.path={data_dir}", "data.dataset=toy", "data.max_history=5",
            f"model.name_or_path={model_dir}", "model.dtype=float32", "train.batch_size=4", "train.max_steps=2",
            "train.log_every=1", "train.eval_users=4", "decode.batch_users=4", "eval.users=6", "eval.ks=[1,10]",
            "decode.num_beams=10", *extra]


def setup_for(model_dir, data_dir, *extra):
    from genrec.config import load_config
    from genrec.recommender import prepare

    return prepare(load_config(None, [f"data.path={data_dir}", "data.dataset=toy", "data.max_history=5",
                                      f"model.name_or_path={model_dir}", "model.dtype=float32", *extra]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("identifier", ["title", "atomic"])
def test_trains_and_decodes_real_items(model_dirs, toy_data_dir, tmp_path, arch, identifier):
    config = {"title": "smollm2_lora.yaml", "atomic": "smollm2_atomic.yaml"}[identifier]
    args = ["--config", str(REPO / "recipes" / "configs" / "ml100k" / config),
            *overrides(model_dirs[arch], toy_data_dir, tmp_path / "run", "train.save_every=0")]
    load_recipe("finetune").main(args)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    results = load_recipe("evaluate").main([*args, f"run.output_dir={tmp_path / 'eval'}",
                                            f"run.checkpoint={tmp_path / 'run' / 'adapter'}"])
    m = results["metrics"]
    assert results["protocol"]["users"] == 6
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0
    lists = [json.loads(x)["items"] for x in (tmp_path / "eval" / "rankings.jsonl").read_text().splitlines()]
    assert len(lists) == 6 and all(len(items) == 10 == len(set(items)) for items in lists)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prefix_attention_equals_the_plain_cache(model_dirs, toy_data_dir, arch):
    from genrec.decoding.search import constrained_topk
    from genrec.decoding.shared_prefix import supports
    from genrec.model.loading import load_base_model

    setup = setup_for(model_dirs[arch], toy_data_dir)
    model = load_base_model(setup.cfg.model, setup.model_path).eval()
    assert supports(model, 200)
    users = setup.split.eval_users[:6]
    prompts = [setup.encoder.prompt_ids(setup.split.example(u, "test", 5)) for u in users]
    excluded = [setup.split.seen(u, "test") for u in users]
    assert setup.index.max_depth > 2  # multi-token titles: several beam steps over the shared prompt
    kwargs = dict(k=10, num_beams=10, excluded=excluded, pad_id=setup.tokenizer.pad_token_id)
    shared = constrained_topk(model, prompts, setup.index, shared_prefix=True, **kwargs)
    plain = constrained_topk(model, prompts, setup.index, shared_prefix=False, **kwargs)
    for a, b in zip(shared, plain):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)


def test_shared_prefix_is_refused_where_it_would_not_be_exact():
    from types import SimpleNamespace

    from genrec.decoding.shared_prefix import supports

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**config))

    assert supports(model(model_type="mistral", sliding_window=64), 64)
    assert not supports(model(model_type="mistral", sliding_window=64), 65)  # the window would hide the prompt start
    assert supports(model(model_type="qwen2", sliding_window=64, layer_types=["full_attention"]), 500)
    assert not supports(model(model_type="gemma2", attn_logit_softcapping=50.0))
    assert not supports(model(model_type="gemma", attn_logit_softcapping=50.0))
    assert not supports(model(model_type="gpt2"))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_item_softmax_rows_equal_the_models_own_logits(model_dirs, toy_data_dir, arch):
    """candidate_logits multiplies only the item rows (with peft's trained rows) where the architecture's
    logits are its plain output layer; the result must equal the full logits at those columns."""
    from genrec.config import AdapterConfig
    from genrec.model.loading import attach_adapter
    from genrec.model.output_head import plain_head
    from genrec.training.batching import collate
    from genrec.training.loss import candidate_logits

    setup = setup_for(model_dirs[arch], toy_data_dir, "items.identifier=atomic",
                      "prompt.template=prompts/next_item_atomic.yaml")
    model = attach_adapter(setup.load_model(), AdapterConfig(dropout=0.0), setup.item_tokens).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p))  # trained rows that differ from the base's
    assert plain_head(model)
    batch = collate([{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, -100, 8, 9]}], pad_id=0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    candidates = torch.tensor(sorted(setup.item_tokens))
    with torch.no_grad():
        fast = candidate_logits(model, inputs, batch["loss_positions"], candidates)
        full = model(**inputs).logits[batch["loss_positions"]][:, candidates]
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-4)


def test_a_chat_template_without_system_turns_gets_the_system_text_in_the_user_turn(model_dirs, toy_data_dir):
    gemma = setup_for(model_dirs["gemma"], toy_data_dir)
    llama = setup_for(model_dirs["llama"], toy_data_dir)
    system = gemma.template.render_system().strip()
    assert system  # prompts/next_item_title.yaml has one
    example = gemma.split.example(gemma.split.eval_users[0], "test", 5)
    assert not gemma.formatter.system_turn and llama.formatter.system_turn
    text = gemma.formatter.prompt(example)
    assert "<|im_start|>system" not in text and f"<|im_start|>user\n{system}\n\n" in text
    assert f"<|im_start|>system\n{system}<|im_end|>" in llama.formatter.prompt(example)
