"""Fixtures: a tiny byte-level BPE tokenizer with a chat template, a tiny random Llama
saved as an HF folder, and a synthetic RecBole-format dataset. Nothing is downloaded."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = ["Star", "Night", "Love", "Return", "Dark", "City", "Blue", "Last", "River", "Ghost", "King", "Dream"]


def toy_titles(n_items: int) -> list[tuple[str, str]]:
    rng = random.Random(7)
    out = []
    for i in range(1, n_items + 1):
        words = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
        out.append((words, str(1950 + (i * 7) % 50)))
    out[5] = out[4]  # a duplicate title, disambiguated by the catalog
    return out


def write_toy_dataset(folder: Path, n_users: int = 24, n_items: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "toy.item").open("w") as fh:
        fh.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for i, (title, year) in enumerate(toy_titles(n_items), start=1):
            fh.write(f"{i}\t{title}\t{year}\tDrama\n")
    with (folder / "toy.inter").open("w") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u in range(1, n_users + 1):
            # users prefer a band of items so that there is something to learn
            band = [(u * 3 + j) % n_items + 1 for j in range(12)]
            items = rng.sample(band, rng.randint(5, 10))
            for t, item in enumerate(items):
                fh.write(f"{u}\t{item}\t{rng.randint(1, 5)}\t{1000 + 10 * t + rng.random():.3f}\n")
    return folder


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"{t} ({y})" for t, y in toy_titles(40)] + [
        "Movies this user watched, oldest first:", "Which movie will they watch next?", "You recommend movies.",
        "Items this user interacted with, oldest first: item_1, item_2", "Which item comes next?", "system user assistant",
    ]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def build_tiny_model(folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy-data"))


@pytest.fixture()
def tiny_overrides(tiny_model_dir, toy_data_dir, tmp_path) -> list[str]:
    """Config overrides that point every recipe at the tiny model and toy data, writing into tmp_path."""
    return [
        f"run.output_dir={tmp_path / 'run'}",
        f"data.path={toy_data_dir}",
        "data.dataset=toy",
        "data.max_history=5",
        f"model.name_or_path={tiny_model_dir}",
        "model.dtype=float32",
        f"prompt.template={REPO / 'prompts' / 'next_item_title.yaml'}",
        "train.batch_size=4",
        "train.log_every=1",
        "train.eval_users=6",
        "decode.batch_users=4",
    ]


@pytest.fixture(scope="module")
def tiny_title_setup(tiny_model_dir, toy_data_dir):
    """(Setup, untuned tiny model in eval mode) for title identifiers on the toy data: a multi-level trie."""
    from genrec.config import load_config
    from genrec.modeling import load_base_model
    from genrec.recommender import prepare

    cfg = load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy", "data.max_history=5",
                             f"model.name_or_path={tiny_model_dir}", "model.dtype=float32"])
    setup = prepare(cfg)
    return setup, load_base_model(cfg.model, setup.model_path).eval()
