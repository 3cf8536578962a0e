"""What bigger models need, checked on tiny ones: item rows of an untied output layer are trained, saved
and reloaded; gradient checkpointing gives the same loss and gradients; the attention implementation and
4-bit storage dtype switches; where weights are placed; tokenization in several processes."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model
from helpers_recipes import load_recipe
from safetensors.torch import load_file
from test_atomic import atomic


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-untied"), tie=False)


def test_untied_output_layer_item_rows_train_save_and_reload(untied_model_dir, toy_data_dir, tmp_path):
    """Llama-3-8B, Mistral-7B and Qwen2.5-7B do not tie their output layer: the item rows must be trained in
    both layers, saved in the adapter, and give the same scores once evaluate/recommend reload it."""
    from genrec.config import load_config
    from genrec.decoding.ensemble import item_log_probs
    from genrec.decoding.search import NextTokenLogProbs
    from genrec.recommender import Recommender, prepare

    overrides = atomic([f"run.output_dir={tmp_path / 'run'}", f"data.path={toy_data_dir}", "data.dataset=toy",
                        "data.max_history=5", f"model.name_or_path={untied_model_dir}", "model.dtype=float32",
                        "train.batch_size=4", "train.max_steps=3", "train.lr=1e-2", "train.embedding_lr=5e-2",
                        "train.eval_users=4", "adapter.dropout=0.0"])
    cfg = load_config(None, overrides)
    setup = prepare(cfg)
    grown = setup.load_model()  # the rows before training
    start_in = grown.get_input_embeddings().weight[setup.item_tokens].detach().clone()
    start_out = grown.get_output_embeddings().weight[setup.item_tokens].detach().clone()
    assert not torch.equal(start_in, start_out)

    load_recipe("finetune").main(overrides)
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    rows_in = [v for k, v in saved.items() if "embed_tokens.token_adapter" in k]
    rows_out = [v for k, v in saved.items() if "lm_head.token_adapter" in k]
    assert len(rows_in) == len(rows_out) == 1
    assert rows_in[0].shape == rows_out[0].shape == (len(setup.item_tokens), start_in.shape[1])
    # the item softmax reaches every item's output row; the input row of each item the 3 steps showed
    assert (rows_out[0] - start_out).abs().amax(1).min() > 0
    assert ((rows_in[0] - start_in).abs().amax(1) > 0).float().mean() > 0.5

    # reloaded and merged into the base, as evaluate and recommend do = the adapter applied unmerged
    from genrec.model.loading import load_adapter

    rec, _ = Recommender.load(cfg)
    live = load_adapter(setup.load_model(), tmp_path / "run" / "adapter").eval()
    users = setup.split.eval_users[:5]
    prompts = [setup.encoder.prompt_ids(setup.split.example(u, "test", 5)) for u in users]
    merged_scores = item_log_probs(rec.next_logp, prompts, setup.index, setup.tokenizer.pad_token_id)
    live_scores = item_log_probs(NextTokenLogProbs(live), prompts, setup.index, setup.tokenizer.pad_token_id)
    torch.testing.assert_close(merged_scores, live_scores, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        out_rows = live.get_output_embeddings().weight[setup.item_tokens]
    torch.testing.assert_close(out_rows, rows_out[0])  # the live model reads the saved output rows


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_overrides):
    """Non-reentrant checkpointing with LoRA and trainable item rows (frozen inputs, trainable tokens)."""
    from genrec.config import AdapterConfig, load_config
    from genrec.model.loading import attach_adapter
    from genrec.recommender import prepare
    from genrec.training.batching import collate
    from genrec.training.loss import completion_loss

    setup = prepare(load_config(None, atomic(tiny_overrides)))
    results = []
    for checkpointing in (False, True):
        setup.cfg.train.gradient_checkpointing = checkpointing
        torch.manual_seed(0)
        model = attach_adapter(setup.load_model(for_training=True), AdapterConfig(dropout=0.0), setup.item_tokens)
        assert model.base_model.model.model.gradient_checkpointing == checkpointing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        model.train()
        ids = [setup.item_tokens[i] for i in (1, 4, 2, 7)]
        batch = collate([{"input_ids": [5, 6, *ids], "labels": [-100, -100, -100, *ids[1:]]}] * 2, pad_id=0)
        loss = completion_loss(model, batch, torch.tensor(sorted(setup.item_tokens)))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    assert ckpt == pytest.approx(plain, rel=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys() and any("trainable_tokens" in n for n in plain_grads)
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_is_on_in_a_training_run(tiny_overrides, tmp_path, monkeypatch):
    import transformers

    calls = []
    original = transformers.PreTrainedModel.gradient_checkpointing_enable

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "gradient_checkpointing_enable", spy)
    load_recipe("finetune").main([*tiny_overrides, "train.max_steps=1", "train.gradient_checkpointing=true"])
    assert calls and calls[0]["gradient_checkpointing_kwargs"] == {"use_reentrant": False}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_implementation_is_applied_and_ranks_alike(tiny_title_setup, implementation):
    from genrec.decoding.search import constrained_topk
    from genrec.model.loading import load_base_model

    setup, reference = tiny_title_setup  # sdpa, the default
    setup.cfg.model.attn_implementation = implementation
    try:
        model = load_base_model(setup.cfg.model, setup.model_path).eval()
    finally:
        setup.cfg.model.attn_implementation = "sdpa"
    assert model.config._attn_implementation == implementation
    users = setup.split.eval_users[:4]
    prompts = [setup.encoder.prompt_ids(setup.split.example(u, "test", 5)) for u in users]
    kwargs = dict(k=10, num_beams=10, pad_id=setup.tokenizer.pad_token_id)
    got = constrained_topk(model, prompts, setup.index, **kwargs)
    want = constrained_topk(reference, prompts, setup.index, **kwargs)
    for a, b in zip(got, want):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)


def test_flash_attention_without_the_package_or_a_gpu_is_a_config_error(tiny_overrides):
    from genrec.config import load_config
    from genrec.errors import ConfigError
    from genrec.model.loading import attention_implementation

    cfg = load_config(None, [*tiny_overrides, "model.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="flash_attention_2"):
        attention_implementation(cfg.model)
    with pytest.raises(ConfigError, match="must be one of sdpa, eager, flash_attention_2"):
        load_config(None, [*tiny_overrides, "model.attn_implementation=flash"])


def test_4bit_storage_dtype_is_the_one_asked(tiny_overrides):
    pytest.importorskip("bitsandbytes")
    from genrec.config import load_config
    from genrec.errors import ConfigError
    from genrec.model.loading import load_base_model

    cfg = load_config(None, [*tiny_overrides, "model.quantization=4bit", "model.dtype=bfloat16",
                             "model.bnb_4bit_quant_storage=bfloat16"])
    model = load_base_model(cfg.model)
    packed = [m.weight for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert packed and {w.dtype for w in packed} == {torch.bfloat16}
    default = load_base_model(load_config(None, [*tiny_overrides, "model.quantization=4bit"]).model)
    assert {m.weight.dtype for m in default.modules() if type(m).__name__ == "Linear4bit"} == {torch.uint8}
    with pytest.raises(ConfigError, match="bnb_4bit_quant_storage"):
        load_config(None, [*tiny_overrides, "model.bnb_4bit_quant_storage=bfloat16"])  # not quantized to 4 bits


def test_weights_are_placed_where_they_run(tiny_overrides):
    from genrec.config import load_config
    from genrec.errors import ConfigError
    from genrec.model.loading import placement
    from genrec.recommender import inference_device

    cfg = load_config(None, tiny_overrides)
    assert placement(cfg.model, "cpu", quantized=False) == {}
    assert placement(cfg.model, "cpu", quantized=True) == {"device_map": {"": torch.device("cpu")}}
    assert placement(cfg.model, "cuda:1", quantized=False) == {"device_map": {"": torch.device("cuda:1")}}
    assert inference_device(cfg) == torch.device("cpu")  # no GPU here
    spread = load_config(None, [*tiny_overrides, "model.device_map=auto"])
    assert inference_device(spread) is None
    with pytest.raises(ConfigError, match="no.*GPU|none is visible"):
        placement(spread.model, None, quantized=False)


def test_tokenization_in_several_processes_equals_one(tiny_overrides, tmp_path):
    from genrec.config import load_config
    from genrec.prompts.encoding import tokenize_workers, tokenized_dataset
    from genrec.recommender import prepare

    setup = prepare(load_config(None, atomic(tiny_overrides)))
    examples = setup.training_examples()
    one = tokenized_dataset(setup.encoder, examples, tmp_path / "one")
    two = tokenized_dataset(setup.encoder, examples, tmp_path / "two", num_proc=2)
    assert one["input_ids"][:] == two["input_ids"][:] and one["labels"][:] == two["labels"][:]
    assert tokenize_workers(1, 10**6) is None and tokenize_workers(4, 10) == 4
    assert tokenize_workers(None, 10) is None  # few examples: not worth starting workers
