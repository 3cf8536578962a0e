"""Rendered text → token ids: training examples with a completion-only loss mask,
prompts for decoding, and the ItemIndex over every item's completion.

Prompt and completion are tokenized separately and concatenated, so the ids the
model is trained on after the prompt are exactly the ids the trie allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import datasets
import torch

from genrec.data.splits import Example
from genrec.errors import ConfigError, TemplateError
from genrec.io import atomic_folder
from genrec.items.index import ItemIndex
from genrec.prompts.template import PromptFormatter

IGNORE_INDEX = -100
MARK = "\u2063"  # invisible separator around a history item's position while the prompt is segmented


def end_token_id(tokenizer, use_chat: bool) -> int:
    """The token that closes a completion: the chat template's end-of-turn, else EOS."""
    if use_chat:
        marker = "\u2063genrec\u2063"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        tail = text.split(marker, 1)[1]
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        if ids and ids[0] in tokenizer.all_special_ids:
            return ids[0]
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to end completions with")
    return tokenizer.eos_token_id


class Encoder:
    def __init__(self, formatter: PromptFormatter, max_length: int = 1024, item_tokens: list[int] | None = None,
                 tokens_per_item: int = 1, segmented: bool = False):
        self.formatter = formatter
        self.tokenizer = formatter.tokenizer
        self.max_length = max_length
        self.end_id = end_token_id(self.tokenizer, formatter.use_chat)
        # added item tokens (atomic: one per item; semantic: the same number of codes per item): every item's
        # completion has the same length, so no end token is needed for it to be unambiguous
        self.item_tokens = frozenset(item_tokens or ())
        self.tokens_per_item = tokens_per_item
        # titles (or plain ids) under the sequence objective: each history item is tokenized on its own as its
        # completion (text + end token), exactly the ids the trie decodes, never merged with its neighbours
        self.segmented = segmented
        self._newline: torch.Tensor | None = None

    def prompt_ids(self, example: Example) -> list[int]:
        if self.segmented and example.task is None:
            return self.segmented_prompt(example)[0]
        text = self.formatter.prompt(example)
        return self.tokenizer(text, add_special_tokens=not self.formatter.use_chat)["input_ids"]

    def segmented_prompt(self, example: Example) -> tuple[list[int], list[tuple[int, int]]]:
        """Prompt ids with every history item as its own completion ids, and each item's (start, end) span."""
        markers = [f"{MARK}{i}{MARK}" for i in range(len(example.history))]
        pieces = re.split(f"{MARK}(\\d+){MARK}", self.formatter.prompt(example, history=markers))
        shown = [int(p) for p in pieces[1::2]]
        if shown != list(range(len(example.history))):
            raise TemplateError(f"{self.formatter.template.source}: the sequence objective needs the prompt to show "
                                "each history item once, oldest first ({{ history }})")
        ids, spans = [], []
        for n, piece in enumerate(pieces):
            if n % 2 == 0:
                if piece:
                    ids += self.tokenizer(piece, add_special_tokens=n == 0 and not self.formatter.use_chat)["input_ids"]
                continue
            item = self.formatter.catalog[example.history[int(piece)]]
            item_ids = self.completion_ids(self.formatter.template.render_completion(item, self.formatter.identifier))
            spans.append((len(ids), len(ids) + len(item_ids)))
            ids += item_ids
        return ids, spans

    def completion_ids(self, completion: str) -> list[int]:
        ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        return ids if self.item_tokens else ids + [self.end_id]

    def rationale_ids(self, line: str) -> list[int]:
        """A rationale or explanation line and the newline that ends it (tokenized on its own, as generation sees it)."""
        return self.tokenizer(line + "\n", add_special_tokens=False)["input_ids"]

    def newline_tokens(self) -> torch.Tensor:
        """Every token whose text holds a newline: the end of a generated rationale."""
        if self._newline is None:
            vocab = range(len(self.tokenizer))
            self._newline = torch.tensor([t for t in vocab if "\n" in self.tokenizer.decode([t])], dtype=torch.long)
        return self._newline

    def encode(self, example: Example) -> dict:
        rendered = self.formatter.render(example)
        prompt = self.tokenizer(rendered.prompt, add_special_tokens=not self.formatter.use_chat)["input_ids"]
        completion = self.completion_ids(rendered.completion)
        if rendered.rationale is not None:
            completion = self.rationale_ids(rendered.rationale) + completion  # the model writes both
        if rendered.explanation is not None:
            completion = completion + self.rationale_ids(rendered.explanation)  # the item, then why
        overflow = len(prompt) + len(completion) - self.max_length
        if example.sequence_from is not None and self.segmented:
            return self._segment_labels(example, completion)
        if example.sequence_from is not None:
            return self._sequence_labels(example, prompt + completion, overflow)
        if overflow > 0:
            prompt = prompt[overflow:]  # keep the most recent history and the question
        return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}

    def _segment_labels(self, example: Example, completion: list[int]) -> dict:
        """Sequence objective over segmented items: labels on every item span from ``sequence_from`` on."""
        prompt, spans = self.segmented_prompt(example)
        ids = prompt + completion
        if len(ids) > self.max_length:
            raise ConfigError(f"a {len(example.sequence)}-item sequence window renders to {len(ids)} tokens, more than "
                              f"train.max_length={self.max_length}; raise it or lower data.max_history")
        spans.append((len(prompt), len(ids)))
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans[example.sequence_from:]:
            labels[start:end] = ids[start:end]
        return {"input_ids": ids, "labels": labels}

    def _sequence_labels(self, example: Example, ids: list[int], overflow: int) -> dict:
        """Sequence objective: a label on every item token from ``example.sequence_from`` on, each predicted
        from everything before it — one forward pass trains as many targets as the window has items
        (every code token of each item, with semantic ids)."""
        if not self.item_tokens:
            raise ConfigError("train.objective=sequence needs items.identifier=atomic or semantic (added item tokens)")
        if overflow > 0:
            raise ConfigError(f"a {len(example.sequence)}-item sequence window renders to {len(ids)} tokens, more than "
                              f"train.max_length={self.max_length}; raise it or lower data.max_history")
        positions = [p for p, tok in enumerate(ids) if tok in self.item_tokens]
        width = self.tokens_per_item
        if len(positions) != len(example.sequence) * width:
            raise TemplateError(f"{self.formatter.template.source}: the sequence objective needs the prompt to show "
                                f"each history item once as its item tokens ({{{{ history }}}}) and the completion the "
                                f"target's; a {len(example.sequence)}-item window rendered {len(positions)} item tokens "
                                f"({width} per item expected)")
        labels = [IGNORE_INDEX] * len(ids)
        for p in positions[example.sequence_from * width:]:
            labels[p] = ids[p]
        return {"input_ids": ids, "labels": labels}

    def item_index(self) -> ItemIndex:
        catalog, template, identifier = self.formatter.catalog, self.formatter.template, self.formatter.identifier
        if template.answers:  # pointwise: the model answers yes or no about the item in the prompt
            return ItemIndex([self.completion_ids(template.render_answer(a)) for a in template.answers],
                             names=list(template.answers))
        completions = [template.render_completion(item, identifier) for item in catalog.items]
        ids = [self.completion_ids(c) for c in completions]
        return ItemIndex(ids, names=completions)

    def fingerprint(self) -> str:
        tok = self.tokenizer
        parts = {
            "template": self.formatter.template.sha256,
            "identifier": self.formatter.identifier,
            "chat": self.formatter.use_chat,
            "vocab": len(tok),
            "tokenizer": getattr(tok, "name_or_path", ""),
            "max_length": self.max_length,
            "end": self.end_id,
            "item_tokens": len(self.item_tokens),
            "segmented": self.segmented,
            "item_ids": hashlib.sha256("".join(it.identifier(self.formatter.identifier)
                                               for it in self.formatter.catalog.items).encode()).hexdigest()[:16],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def training_data_fingerprint(encoder: Encoder, examples: list[Example]) -> str:
    """Changes whenever the tokenized training data would: template, tokenizer, identifiers, or any example."""
    digest = hashlib.sha256()
    digest.update(encoder.fingerprint().encode())
    for ex in examples:
        digest.update(f"{ex.user_id}|{','.join(map(str, ex.history))}|{ex.target}|{ex.sequence_from}|"
                      f"{ex.rationale}|{ex.explanation}|{ex.label}|{ex.task}|{ex.masked}\n".encode())
    return digest.hexdigest()[:20]


def tokenize_workers(configured: int | None, examples: int) -> int | None:
    """data.tokenize_workers, or (null) one worker per CPU core up to 8 once there are enough examples to
    repay starting them (each worker pickles the encoder and starts its own tokenizer)."""
    if configured is not None:
        return configured if configured > 1 else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores) if examples >= 20_000 and cores > 1 else None


def tokenized_dataset(encoder: Encoder, examples: list[Example], cache_dir: str | Path, num_proc: int | None = None) -> datasets.Dataset:
    """Arrow-cached tokenized examples; the cache key covers template, tokenizer, examples and length."""
    folder = Path(cache_dir) / f"tokenized-{training_data_fingerprint(encoder, examples)}"
    if (folder / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(folder))
    raw = datasets.Dataset.from_dict(
        {
            "user_id": [ex.user_id for ex in examples],
            "history": [list(ex.history) for ex in examples],
            "target": [ex.target for ex in examples],
            "sequence_from": [ex.sequence_from for ex in examples],
            "rationale": [ex.rationale for ex in examples],
            "explanation": [ex.explanation for ex in examples],
            "label": [ex.label for ex in examples],
            "task": [ex.task for ex in examples],
            "masked": [ex.masked for ex in examples],
        }
    )

    def encode_batch(batch):
        out = {"input_ids": [], "labels": []}
        for user, history, target, first, why, because, label, task, masked in zip(
                batch["user_id"], batch["history"], batch["target"], batch["sequence_from"], batch["rationale"],
                batch["explanation"], batch["label"], batch["task"], batch["masked"]):
            enc = encoder.encode(Example(user, tuple(history), target, first, why, because, label, task, masked))
            out["input_ids"].append(enc["input_ids"])
            out["labels"].append(enc["labels"])
        return out

    encoded = raw.map(encode_batch, batched=True, batch_size=512, num_proc=num_proc, desc="tokenizing",
                      remove_columns=["history"], load_from_cache_file=False)
    encoded = encoded.map(lambda b: {"length": [len(x) for x in b["input_ids"]]}, batched=True, load_from_cache_file=False)
    with atomic_folder(folder, shared=True) as tmp:  # another process may finish the same cache first
        encoded.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(folder))
