"""End-to-end checks on the real embedded defaults: the bundled SmolLM2 GGUF and ml-100k."""

from __future__ import annotations

import pytest
import torch

from genrec.config import load_config
from genrec.decoding.search import constrained_topk
from genrec.model.loading import load_base_model
from genrec.recommender import prepare

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def default_setup():
    cfg = load_config("recipes/configs/ml100k/smollm2_lora_demo.yaml", [])
    return cfg, prepare(cfg)


def test_ml100k_catalog_and_split(default_setup):
    _, setup = default_setup
    split = setup.split
    assert len(split.catalog) == 1682 and len(split.eval_users) == 943
    assert split.catalog.by_id["1"].text == "Toy Story (1995)"
    texts = [it.text for it in split.catalog.items]
    assert len(set(texts)) == len(texts)  # duplicate titles were disambiguated
    assert split.train_popularity().sum() == 100_000 - 2 * 943


def test_default_gguf_converts_and_decodes_valid_distinct_items(default_setup):
    cfg, setup = default_setup
    assert (setup.model_path / "model.safetensors").is_file()
    assert setup.formatter.use_chat and setup.encoder.end_id == setup.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = load_base_model(cfg.model, setup.model_path).eval()
    assert next(model.parameters()).dtype == (torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32)
    users = setup.split.eval_users[:2]
    prompts = [setup.encoder.prompt_ids(setup.split.example(u, "test", cfg.data.max_history)) for u in users]
    seen = [setup.split.seen(u, "test") for u in users]
    results = constrained_topk(model, prompts, setup.index, k=20, num_beams=20, excluded=seen,
                               pad_id=setup.tokenizer.pad_token_id)
    for ranked, excluded in zip(results, seen):
        items = [i for i, _ in ranked]
        assert len(items) == 20 and len(set(items)) == 20 and not set(items) & excluded
        for i in items:  # every generated token sequence spells exactly that catalog item
            assert setup.index.item_of(setup.index.sequences[i]) == i
