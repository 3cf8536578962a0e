"""Titles under the sequence objective: each history title is tokenized on its own as its completion
(text + end token), so training labels are exactly the ids the trie decodes, and decoding prompts are
built the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_recipes import load_recipe

from genrec.config import load_config
from genrec.data.splits import Example
from genrec.errors import TemplateError
from genrec.prompts.encoding import IGNORE_INDEX
from genrec.prompts.template import PromptTemplate
from genrec.recommender import prepare

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "prompts" / "next_item_title_sequence.yaml"


def title_sequence(overrides: list[str], *extra: str) -> list[str]:
    kept = [o for o in overrides if not o.startswith("prompt.template=")]
    return kept + [f"prompt.template={TEMPLATE}", "prompt.chat=off", "train.objective=sequence", *extra]


def test_labels_are_each_items_own_completion_ids(tiny_overrides):
    setup = prepare(load_config(None, title_sequence(tiny_overrides)))
    enc, catalog = setup.encoder, setup.split.catalog
    ex = Example("u", (0, 1, 2, 3), 4, sequence_from=1)
    out = enc.encode(ex)
    ids, labels = out["input_ids"], out["labels"]
    own = [enc.completion_ids(catalog[i].text) for i in ex.sequence]
    assert all(seq[-1] == enc.end_id for seq in own)
    # the window ends with the items' own ids back to back (the template joins them with nothing)
    tail = [t for seq in own for t in seq]
    assert ids[-len(tail):] == tail
    assert [t for t in labels if t != IGNORE_INDEX] == [t for seq in own[1:] for t in seq]  # item 0 is context only
    head = enc.tokenizer("Movies this user watched, oldest first:", add_special_tokens=False)["input_ids"]
    assert ids[: len(head)] == head and len(ids) == len(head) + len(tail)
    # decoding reads the same ids: the prompt for the last target is the window up to its completion
    prompt = enc.prompt_ids(Example("u", ex.history, None))
    assert ids[: len(prompt)] == prompt and len(prompt) == len(ids) - len(own[-1])
    # and the trie decodes exactly the completion the window ends with
    assert setup.index.item_of(own[-1]) == 4


def test_a_template_that_does_not_show_each_item_once_is_rejected(tiny_overrides, tmp_path):
    bad = tmp_path / "twice.yaml"
    bad.write_text('name: twice\nprompt: "{{ history | join(\'\') }} again: {{ history | join(\'\') }}"\n'
                   'completion: "{{ target }}"\n')
    setup = prepare(load_config(None, title_sequence(tiny_overrides, f"prompt.template={bad}")))
    with pytest.raises(TemplateError, match="each history item once"):
        setup.encoder.encode(Example("u", (0, 1), 2, sequence_from=0))


def test_title_sequence_run_trains_and_ranks_valid_items(tiny_overrides):
    overrides = title_sequence(tiny_overrides, "data.sequence_stride=3", "train.epochs=10", "train.lr=5e-3",
                               "train.warmup_ratio=0", "train.save_every=0", "adapter.dropout=0.0")
    load_recipe("finetune").main(overrides)
    results = load_recipe("evaluate").main(overrides)
    run = Path(load_config(None, overrides).run.output_dir)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # the tiny model learns titles slowly (full-vocabulary loss over text tokens): ~5.9 → ~5.2 in 10 epochs
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    m = results["metrics"]
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0
    assert PromptTemplate.load(TEMPLATE).sha256 == PromptTemplate.load(run / "adapter" / "prompt_template.yaml").sha256
