"""Atomic item identifiers (one added token per item) and the sequence objective: tokens, embedding
growth, whole-history windows, sequence labels, the item-only softmax, and a tiny end-to-end run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers_recipes import load_recipe
from safetensors.torch import load_file

from genrec.baselines import sasrec
from genrec.config import AdapterConfig, load_config
from genrec.data import load_split, sequence_windows
from genrec.data.splits import Example
from genrec.errors import ConfigError, TemplateError
from genrec.items.tokens import add_item_tokens, atomic_names, grow_embeddings
from genrec.model.loading import attach_adapter
from genrec.prompts.encoding import IGNORE_INDEX
from genrec.recommender import prepare
from genrec.training.batching import collate
from genrec.training.loss import completion_loss

REPO = Path(__file__).resolve().parents[1]
ATOMIC_TEMPLATE = REPO / "prompts" / "next_item_atomic.yaml"


def fresh_tokenizer(model_dir: Path):
    """A tokenizer of its own (add_item_tokens mutates it; the session tiny_tokenizer must stay clean)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def base_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def atomic(overrides: list[str], *extra: str) -> list[str]:
    kept = [o for o in overrides if not o.startswith("prompt.template=")]
    return kept + [f"prompt.template={ATOMIC_TEMPLATE}", "prompt.chat=off", "items.identifier=atomic",
                   "train.objective=sequence", *extra]


@pytest.fixture(scope="module")
def toy_catalog(toy_data_dir):
    return load_split(load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy"])).catalog


@pytest.fixture(scope="module")
def toy_split(toy_data_dir):
    return load_split(load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy"]))


@pytest.fixture()
def atomic_setup(tiny_overrides):
    return prepare(load_config(None, atomic(tiny_overrides)))


# ---- 1. tokens ---------------------------------------------------------------------------------------------

def test_add_item_tokens_one_distinct_id_per_item_and_idempotent(tiny_model_dir, toy_catalog, tiny_tokenizer):
    tok = fresh_tokenizer(tiny_model_dir)
    before = len(tok)
    ids = add_item_tokens(tok, atomic_names(toy_catalog))
    assert len(ids) == len(toy_catalog) == 30
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == list(range(before, before + len(ids)))  # brand-new ids, none reused
    assert len(tok) == before + len(ids)
    for item, token_id in zip(toy_catalog.items, ids):  # every item, not only the first three
        name = item.identifier("atomic")
        assert name == f"<item_{item.item_id}>"
        assert tok(name, add_special_tokens=False)["input_ids"] == [token_id]
        assert tok.decode([token_id], skip_special_tokens=True) == name  # not a special token
    # back-to-back tokens (the template's history) split into one id per item
    joined = "".join(item.identifier("atomic") for item in toy_catalog.items[:5])
    assert tok(joined, add_special_tokens=False)["input_ids"] == ids[:5]
    # idempotent: a second call adds nothing and returns the same ids
    assert add_item_tokens(tok, atomic_names(toy_catalog)) == ids
    assert len(tok) == before + len(ids)
    assert len(tiny_tokenizer) == before  # the shared fixture was not touched


# ---- 2. embeddings -----------------------------------------------------------------------------------------

def test_grow_embeddings_title_init_is_mean_of_text_token_rows(tiny_model_dir, toy_catalog):
    tok = fresh_tokenizer(tiny_model_dir)
    model = base_model(tiny_model_dir)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_item_tokens(tok, atomic_names(toy_catalog))
    grow_embeddings(model, tok, toy_catalog, ids, "title")
    embed = model.get_input_embeddings().weight.detach()
    assert embed.shape == (old.shape[0] + len(ids), old.shape[1])
    assert torch.equal(embed[: old.shape[0]], old)  # old rows unchanged
    for item, token_id in zip(toy_catalog.items, ids):
        text_ids = tok(item.text, add_special_tokens=False)["input_ids"]
        assert text_ids and max(text_ids) < old.shape[0]
        torch.testing.assert_close(embed[token_id], old[text_ids].mean(0), rtol=0, atol=1e-6)
    # items with different titles start at different rows
    assert not torch.allclose(embed[ids[0]], embed[ids[1]])
    # the tied output layer reads the same rows
    head = model.get_output_embeddings().weight.detach()
    assert head.shape == embed.shape
    assert torch.equal(head[ids], embed[ids])
    assert head.data_ptr() == embed.data_ptr()
    assert model.config.vocab_size == len(tok)


def test_grow_embeddings_untied_head_gets_rows_from_its_own_weights(tiny_model_dir, toy_catalog):
    """An untied output layer lives in another space than the input embedding: each new output row is the mean
    of the output layer's own rows of the item's text tokens (as each new input row is of the input's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = fresh_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    old_head = model.get_output_embeddings().weight.detach().clone()
    old_embed = model.get_input_embeddings().weight.detach().clone()
    ids = add_item_tokens(tok, atomic_names(toy_catalog))
    grow_embeddings(model, tok, toy_catalog, ids, "title")
    embed, head = model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()
    assert head.data_ptr() != embed.data_ptr()
    assert torch.equal(head[: old_head.shape[0]], old_head)
    for item, token_id in zip(toy_catalog.items, ids):
        text_ids = tok(item.text, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(head[token_id], old_head[text_ids].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(embed[token_id], old_embed[text_ids].mean(0), rtol=0, atol=1e-6)
    assert not torch.allclose(head[ids], embed[ids])


def test_grow_embeddings_random_init_is_seeded(tiny_model_dir, toy_catalog):
    def grown(seed):
        tok = fresh_tokenizer(tiny_model_dir)
        model = base_model(tiny_model_dir)
        ids = add_item_tokens(tok, atomic_names(toy_catalog))
        grow_embeddings(model, tok, toy_catalog, ids, "random", seed=seed)
        return model.get_input_embeddings().weight.detach(), ids

    old = base_model(tiny_model_dir).get_input_embeddings().weight.detach()
    a, ids = grown(1)
    b, _ = grown(1)
    c, _ = grown(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a[ids], c[ids])
    for grown_rows in (a, c):
        assert torch.equal(grown_rows[: old.shape[0]], old)
    # not the title init, and on the scale of the existing rows
    assert a[ids].std().item() == pytest.approx(old.std().item(), rel=0.3)
    tok = fresh_tokenizer(tiny_model_dir)
    text_ids = tok(toy_catalog.items[0].text, add_special_tokens=False)["input_ids"]
    assert not torch.allclose(a[ids[0]], old[text_ids].mean(0), atol=1e-3)



def saved_sasrec(split, path: Path, seed: int = 0) -> Path:
    """An (untrained, seeded) SASRec checkpoint of ``split``: what ``items.atomic_init=sasrec`` reads."""
    from genrec.config import SASRecConfig

    p = SASRecConfig(hidden=16, inner=32, layers=1, heads=2, max_len=8, stride=4)
    torch.manual_seed(seed)
    sasrec.save(path, sasrec.SASRec(len(split.catalog), p), p, split, seed,
                sasrec.FitResult(epochs=0, best_epoch=0, best_valid_ndcg10=0.0, seconds=0.0))
    return path


def test_grow_embeddings_sasrec_init_keeps_the_item_geometry(tiny_model_dir, toy_split, tmp_path):
    """Rows from a SASRec's item embeddings: every dot product between two items is SASRec's times one
    scale (an orthonormal projection), the mean row norm is the vocabulary's, and the old rows stay."""
    vectors = sasrec.item_embeddings(saved_sasrec(toy_split, tmp_path / "sasrec.pt"), toy_split)
    assert vectors.shape == (len(toy_split.catalog), 16)
    tok = fresh_tokenizer(tiny_model_dir)
    model = base_model(tiny_model_dir)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_item_tokens(tok, atomic_names(toy_split.catalog))
    grow_embeddings(model, tok, toy_split.catalog, ids, "sasrec", seed=3, item_vectors=vectors)
    rows = model.get_input_embeddings().weight.detach()[ids]
    assert torch.equal(model.get_input_embeddings().weight.detach()[: old.shape[0]], old)
    assert rows.norm(dim=1).mean().item() == pytest.approx(old.norm(dim=1).mean().item(), rel=1e-4)
    gram, original = rows @ rows.T, vectors @ vectors.T
    scale = gram[0, 0] / original[0, 0]
    torch.testing.assert_close(gram, original * scale, rtol=1e-3, atol=1e-5)
    # the nearest item of each item is SASRec's nearest
    off = torch.eye(len(ids), dtype=torch.bool)
    assert torch.equal(gram.masked_fill(off, -1e9).argmax(1), original.masked_fill(off, -1e9).argmax(1))


def test_sasrec_init_refuses_a_checkpoint_of_other_data_and_needs_its_key(toy_split, toy_data_dir, tmp_path):
    from genrec.data.splits import Split
    from genrec.errors import CheckpointError

    other = Split(toy_split.catalog, {u: s[:-1] for u, s in toy_split.sequences.items()})  # test items in training
    path = saved_sasrec(other, tmp_path / "leaky.pt")
    with pytest.raises(CheckpointError, match="trained on other data"):
        sasrec.item_embeddings(path, toy_split)
    with pytest.raises(CheckpointError, match="items.sasrec_checkpoint: .*missing.pt is not a file"):
        sasrec.item_embeddings(tmp_path / "missing.pt", toy_split)
    base = [f"data.path={toy_data_dir}", "data.dataset=toy", "items.identifier=atomic"]
    with pytest.raises(ConfigError, match="items.sasrec_checkpoint"):
        load_config(None, base + ["items.atomic_init=sasrec"])
    with pytest.raises(ConfigError, match="items.sasrec_checkpoint"):
        load_config(None, base + [f"items.sasrec_checkpoint={path}"])  # set but unused: refused, not ignored


def test_recommender_grows_item_rows_from_the_sasrec_checkpoint(tiny_overrides, toy_split, tmp_path):
    path = saved_sasrec(toy_split, tmp_path / "sasrec.pt", seed=1)
    setup = prepare(load_config(None, atomic(tiny_overrides, "items.atomic_init=sasrec",
                                                f"items.sasrec_checkpoint={path}")))
    rows = setup.load_model().get_input_embeddings().weight.detach()[setup.item_tokens].float()
    vectors = sasrec.item_embeddings(path, setup.split)
    gram, original = rows @ rows.T, vectors @ vectors.T
    torch.testing.assert_close(gram, original * (gram[0, 0] / original[0, 0]), rtol=1e-2, atol=1e-4)

def test_sasrec_weight_ranks_by_the_llm_plus_weighted_sasrec_log_probs(tiny_overrides, toy_split, tmp_path):
    """decode.sasrec_weight = w: each item's score is the LLM's log p plus w times SASRec's log-softmax of the
    same history; w = 0 is the LLM alone, a huge w SASRec's own ranking, and a user with no history (which
    SASRec cannot read) is ranked by the LLM alone."""
    import dataclasses

    from genrec.decoding.search import top_k_unseen
    from genrec.recommender import Recommender

    path = saved_sasrec(toy_split, tmp_path / "sasrec.pt", seed=2)
    setup = prepare(load_config(None, atomic(tiny_overrides, "decode.sasrec_weight=0.5",
                                             f"items.sasrec_checkpoint={path}")))
    rec = Recommender(setup.load_model().eval(), setup)
    assert rec.options.sasrec_weight == 0.5
    users = setup.split.eval_users[:5]
    examples = [setup.split.example(u, "test", 5) for u in users] + [Example("cold", (), None)]
    excluded = [setup.split.seen(u, "test") for u in users] + [set()]
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    llm = rec.item_log_probs(prompts).float()
    model = sasrec.trained_model(path, setup.split)
    sas = torch.log_softmax(sasrec.item_scores(model, [ex.history for ex in examples[:-1]]), -1)
    sas = torch.cat([sas, torch.zeros(1, sas.shape[1])])
    for w in (0.0, 0.5, 3.0):
        got = rec.rank(examples, excluded, 6, dataclasses.replace(rec.options, sasrec_weight=w)).items
        want = top_k_unseen(llm + w * sas, excluded, 6)
        for have, expect in zip(got, want):
            assert [i for i, _ in have] == [i for i, _ in expect]
            assert [s for _, s in have] == pytest.approx([s for _, s in expect], abs=1e-4)
    assert rec.rank(examples, excluded, 6, dataclasses.replace(rec.options, sasrec_weight=0.5)).items != \
        rec.rank(examples, excluded, 6, dataclasses.replace(rec.options, sasrec_weight=0.0)).items
    huge = rec.rank(examples, excluded, 6, dataclasses.replace(rec.options, sasrec_weight=1e4)).items
    alone = sasrec.rank(model, [ex.history for ex in examples[:-1]], excluded[:-1], 6)
    assert [[i for i, _ in r] for r in huge[:-1]] == [[i for i, _ in r] for r in alone]
    assert [i for i, _ in huge[-1]] == [i for i, _ in top_k_unseen(llm[-1:], [set()], 6)[0]]


def test_sasrec_weight_config_needs_the_checkpoint_and_atomic_ids(tiny_overrides, toy_split, tmp_path):
    path = saved_sasrec(toy_split, tmp_path / "sasrec.pt")
    with pytest.raises(ConfigError, match="decode.sasrec_weight need it set"):
        load_config(None, atomic(tiny_overrides, "decode.sasrec_weight=0.5"))
    with pytest.raises(ConfigError, match="decode.sasrec_weight' must be >= 0"):
        load_config(None, atomic(tiny_overrides, "decode.sasrec_weight=-1", f"items.sasrec_checkpoint={path}"))
    with pytest.raises(ConfigError, match="one token per item: use items.identifier=atomic"):
        load_config(None, [*tiny_overrides, "decode.sasrec_weight=0.5", f"items.sasrec_checkpoint={path}"])
    cfg = load_config(None, atomic(tiny_overrides, "decode.sasrec_weight=0.5", f"items.sasrec_checkpoint={path}"))
    assert cfg.items.atomic_init == "title"  # the weight reads the checkpoint without the rows coming from it


# ---- 3. sequence windows -----------------------------------------------------------------------------------

def window_offsets(split, examples):
    """(user, absolute start of the window in the user's training part, example) for every window."""
    out = []
    for ex in examples:
        part, seq = split.train_part(ex.user_id), list(ex.sequence)
        starts = [s for s in range(len(part) - len(seq) + 1) if part[s: s + len(seq)] == seq]
        assert len(starts) == 1, (ex, part)
        out.append((ex.user_id, starts[0], ex))
    return out


@pytest.mark.parametrize("max_history, stride", [(4, 2), (4, 4), (3, 1), (5, None), (20, None)])
def test_sequence_windows_count_every_training_target_once(toy_split, max_history, stride):
    examples = sequence_windows(toy_split, max_history, stride)
    effective = stride or max_history
    counted = Counter()
    for user, start, ex in window_offsets(toy_split, examples):
        seq = ex.sequence
        assert 2 <= len(seq) <= max_history + 1
        assert len(ex.history) == len(seq) - 1 and ex.target == seq[-1]
        assert 1 <= ex.sequence_from <= len(seq) - 1
        for pos in range(ex.sequence_from, len(seq)):
            t = start + pos  # absolute position of the counted target in the user's training part
            counted[(user, t)] += 1
            # context of the counted target inside its window
            assert pos >= min(t, max_history - effective)
    expected = Counter((u, t) for u in toy_split.sequences for t in range(1, len(toy_split.train_part(u))))
    assert counted == expected  # every training item but each user's first, exactly once
    # windows that don't reach the user's start are full windows
    for user, start, ex in window_offsets(toy_split, examples):
        if start > 0:
            assert len(ex.sequence) == max_history + 1


def test_sequence_windows_bad_stride(toy_split):
    from genrec.errors import DataError

    with pytest.raises(DataError):
        sequence_windows(toy_split, 4, 5)


def test_sasrec_training_windows_use_the_same_counted_targets(toy_split):
    max_len, stride = 4, 2
    examples = sequence_windows(toy_split, max_len, stride)
    inputs, targets = sasrec.training_windows(toy_split, max_len, stride)
    assert len(examples) == inputs.shape[0]
    for ex, x, y in zip(examples, inputs.tolist(), targets.tolist()):
        seq = ex.sequence
        assert x[: len(seq) - 1] == [i + 1 for i in seq[:-1]]
        assert [t for t in y if t != sasrec.IGNORE] == list(seq[ex.sequence_from:])
        # the target at input position j is the window item j + 1
        for j, t in enumerate(y):
            if t != sasrec.IGNORE:
                assert t == seq[j + 1]


# ---- 4. encoder -------------------------------------------------------------------------------------------

def test_sequence_labels_sit_on_the_counted_item_tokens(atomic_setup):
    setup = atomic_setup
    token_of = setup.item_tokens
    item_ids = set(token_of)
    examples = sequence_windows(setup.split, 5, 2)
    assert any(ex.sequence_from > 1 for ex in examples)  # some windows count only their tail
    for ex in examples:
        enc = setup.encoder.encode(ex)
        ids, labels = enc["input_ids"], enc["labels"]
        assert len(ids) == len(labels)
        positions = [p for p, t in enumerate(ids) if t in item_ids]
        assert [ids[p] for p in positions] == [token_of[i] for i in ex.sequence]  # every item once, in order
        labelled = [p for p, label in enumerate(labels) if label != IGNORE_INDEX]
        assert labelled == positions[ex.sequence_from:]
        assert all(labels[p] == ids[p] for p in labelled)
        assert ids[-1] == token_of[ex.target]  # no end token after the last item


def test_atomic_index_prompt_and_target_completion(atomic_setup):
    setup = atomic_setup
    assert setup.index.max_depth == 1
    assert setup.index.sequences == [[t] for t in setup.item_tokens]
    ex = setup.split.example(next(iter(setup.split.eval_users)), "valid", 5)
    prompt = setup.encoder.prompt_ids(ex)
    assert prompt[-1] == setup.item_tokens[ex.history[-1]]  # no trailing newline token
    assert not setup.formatter.prompt(ex).endswith("\n")
    # the target objective (sequence_from=None): only the one item token is labelled, no end token
    enc = setup.encoder.encode(ex)
    assert enc["input_ids"] == prompt + [setup.item_tokens[ex.target]]
    assert [label for label in enc["labels"] if label != IGNORE_INDEX] == [setup.item_tokens[ex.target]]


@pytest.mark.parametrize("prompt", [
    "Which movie will they watch next?",  # history omitted
    "Movies: {{ history | join('') }} again: {{ history | join('') }}",  # history twice
])
def test_template_that_does_not_show_each_item_once_is_rejected(tiny_overrides, tmp_path, prompt):
    template = tmp_path / "bad.yaml"
    template.write_text(f"name: bad\nprompt: \"{prompt}\"\ncompletion: \"{{{{ target }}}}\"\n")
    cfg = load_config(None, atomic(tiny_overrides) + [f"prompt.template={template}"])
    setup = prepare(cfg)
    ex = sequence_windows(setup.split, 5, 2)[0]
    with pytest.raises(TemplateError, match="each history item once"):
        setup.encoder.encode(ex)


@pytest.mark.parametrize("identifier", ["title", "id"])
def test_sequence_objective_weighting_needs_atomic_ids(toy_data_dir, identifier):
    base = [f"data.path={toy_data_dir}", "data.dataset=toy", "train.objective=sequence", f"items.identifier={identifier}"]
    assert load_config(None, base).train.objective == "sequence"  # titles and plain ids train item by item
    with pytest.raises(ConfigError, match="target_weighting"):
        load_config(None, base + ["train.target_weighting=inverse_popularity"])


def test_atomic_config_validation(toy_data_dir):
    base = [f"data.path={toy_data_dir}", "data.dataset=toy", "items.identifier=atomic"]
    with pytest.raises(ConfigError, match="lora or dora"):
        load_config(None, base + ["adapter.method=ia3"])
    with pytest.raises(ConfigError, match="sequence_stride"):
        load_config(None, base + ["data.max_history=5", "data.sequence_stride=6"])
    with pytest.raises(ConfigError, match="sequence_stride"):
        load_config(None, base + ["data.sequence_stride=0"])
    cfg = load_config(None, base + ["train.objective=sequence", "adapter.method=dora", "data.sequence_stride=3"])
    assert cfg.items.identifier == "atomic" and cfg.data.sequence_stride == 3


def test_sequence_encoder_without_atomic_ids_is_a_config_error(tiny_overrides):
    setup = prepare(load_config(None, tiny_overrides))  # title ids, target objective
    ex = Example("u", (0, 1, 2), 3, sequence_from=1)
    with pytest.raises(ConfigError, match="atomic"):
        setup.encoder.encode(ex)


# ---- 5. item softmax ---------------------------------------------------------------------------------------

def test_candidate_loss_equals_full_logits_sliced_to_items(atomic_setup):
    setup = atomic_setup
    torch.manual_seed(0)
    model = setup.load_model()
    model = attach_adapter(model, AdapterConfig(dropout=0.0), setup.item_tokens)
    # make every adapter part matter: non-zero LoRA B and item-row deltas
    with torch.no_grad():
        deltas = 0
        for name, p in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.normal_(0, 0.5)
                deltas += "trainable_tokens_delta" in name
    assert deltas >= 1
    model.eval()
    examples = sequence_windows(setup.split, 5, 2)[:6]
    batch = collate([setup.encoder.encode(ex) for ex in examples], setup.tokenizer.pad_token_id)
    candidates = torch.tensor(sorted(setup.item_tokens))
    with torch.no_grad():
        loss = completion_loss(model, batch, candidates).item()
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], use_cache=False).logits.float()
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    logits = full[:, :-1][keep][:, candidates]
    targets = batch["labels"][:, 1:][keep]
    assert targets.numel() == sum(len(ex.sequence) - ex.sequence_from for ex in examples)
    index = torch.tensor([sorted(setup.item_tokens).index(t) for t in targets.tolist()])
    by_hand = F.cross_entropy(logits, index).item()
    assert loss == pytest.approx(by_hand, rel=1e-5, abs=1e-5)
    # and it is not the whole-vocabulary loss
    whole = F.cross_entropy(full[:, :-1][keep], targets).item()
    assert whole > by_hand + 1e-3


def test_item_rows_get_their_own_learning_rate(atomic_setup, tiny_overrides):
    finetune = load_recipe("finetune")
    model = attach_adapter(atomic_setup.load_model(for_training=True), AdapterConfig(), atomic_setup.item_tokens)
    cfg = load_config(None, atomic(tiny_overrides, "train.lr=1e-3", "train.embedding_lr=5e-2"))
    rest, tokens = finetune.parameter_groups(model, cfg)
    assert "lr" not in rest and tokens["lr"] == 5e-2
    assert [tuple(p.shape) for p in tokens["params"]] == [(30, 64)]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in (rest, tokens) for p in g["params"]) == trainable
    plain = finetune.parameter_groups(model, load_config(None, atomic(tiny_overrides, "train.lr=1e-3")))
    assert plain[1]["lr"] == 1e-3


# ---- 6. end to end -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def atomic_run(tiny_model_dir, toy_data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("atomic") / "run"
    overrides = atomic([f"run.output_dir={run}", f"data.path={toy_data_dir}", "data.dataset=toy",
                        "data.max_history=5", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                        "train.batch_size=4", "train.eval_users=6", "decode.batch_users=4"],
                       "data.sequence_stride=3", "train.epochs=10", "train.lr=3e-3", "train.warmup_ratio=0",
                       "train.log_every=9", "train.save_every=0", "adapter.dropout=0.0")
    load_recipe("finetune").main(overrides)
    results = load_recipe("evaluate").main(overrides)
    return run, overrides, results


def test_atomic_sequence_run_trains_and_loss_decreases(atomic_run):
    run, _, _ = atomic_run
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 5
    assert losses[0] == pytest.approx(torch.log(torch.tensor(30.0)).item(), rel=0.15)  # item softmax: ~log(30)
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < min(losses[:3])


def test_atomic_adapter_saves_item_row_deltas_not_the_embedding(atomic_run, tiny_model_dir):
    run, _, _ = atomic_run
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    hidden = base_model(tiny_model_dir).config.hidden_size
    deltas = {k: v for k, v in saved.items() if "trainable_tokens" in k}
    assert len(deltas) == 1
    (key, delta), = deltas.items()
    assert key.endswith("embed_tokens.token_adapter.trainable_tokens_delta")
    assert tuple(delta.shape) == (30, hidden)
    assert delta.abs().sum() > 0
    assert all("lora_" in k for k in saved if k != key)  # nothing else: no full embedding/lm_head matrix
    assert not any(v.ndim == 2 and v.shape[0] >= 400 for v in saved.values())
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == list(range(400, 430))
    info = json.loads((run / "adapter" / "genrec.json").read_text())
    assert info["identifier"] == "atomic"


def test_atomic_evaluation_ranks_valid_distinct_items(atomic_run):
    run, _, results = atomic_run
    on_disk = json.loads((run / "eval_results.json").read_text())
    assert on_disk["metrics"] == results["metrics"]
    m = results["metrics"]
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0
    assert results["protocol"]["users"] == 24
    rows = [json.loads(x) for x in (run / "rankings.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(len(r["items"]) == 20 == len(set(r["items"])) for r in rows)


def test_merged_model_changes_only_item_rows(atomic_run, tiny_model_dir):
    from genrec.recommender import Recommender

    run, overrides, _ = atomic_run
    cfg = load_config(None, overrides)
    rec, folder = Recommender.load(cfg)
    assert folder == run / "adapter"
    merged = rec.model.get_input_embeddings().weight.detach()
    base = base_model(tiny_model_dir).get_input_embeddings().weight.detach()
    n_old = base.shape[0]
    assert merged.shape == (n_old + 30, base.shape[1])
    assert torch.equal(merged[:n_old], base)  # text-token rows untouched
    start = rec.setup.load_model().get_input_embeddings().weight.detach()  # the grown, untrained rows
    assert torch.equal(start[:n_old], base)
    saved = load_file(str(folder / "adapter_model.safetensors"))
    rows = next(v for k, v in saved.items() if "trainable_tokens_delta" in k)  # peft stores the rows' new values
    assert torch.equal(merged[n_old:], rows)
    assert (merged[n_old:] - start[n_old:]).abs().amax(1).min() > 0  # every item row trained
    head = rec.model.get_output_embeddings().weight.detach()
    assert torch.equal(head, merged)  # the tied output layer carries the same trained rows
