"""Tiny random models and a toy dataset for tests, benchmarks and the GPU check (no pytest here: the GPU
check imports this on a machine that may lack it). Nothing is downloaded."""

from __future__ import annotations

import random
from pathlib import Path

import torch

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


# Gemma's chat template refuses a system turn, as the real one does
GEMMA_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma")


def build_tiny_model(folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0, arch: str = "llama",
                     tie: bool = True) -> Path:
    """A tiny random decoder of the given architecture (built from its config, nothing downloaded)."""
    import transformers

    tokenizer = build_tokenizer()
    if arch == "gemma":
        tokenizer.chat_template = GEMMA_CHAT
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, tie_word_embeddings=tie,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "gemma":
        common["head_dim"] = hidden // 4
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
    }[arch]
    model = model_class(config_class(**common))
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def driver_arguments():
    """--out, --model and --data of the scripts the multi-process tests launch under torchrun."""
    import argparse

    parser = argparse.ArgumentParser()
    for name in ("--out", "--model", "--data"):
        parser.add_argument(name, required=True)
    return parser.parse_args()
