"""A tiny word-level tokenizer built in memory (no downloads), for prompt/formatter tests.

tests/conftest.py already provides a byte-level BPE ``tiny_tokenizer`` fixture; this
helper builds a simpler, fully predictable one (one id per whitespace-separated word),
with or without a chat template.
"""

from __future__ import annotations

SPECIALS = ["<pad>", "<unk>", "</s>", "<|end|>"]
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_word_tokenizer(corpus: list[str], chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast
