"""Semantic item identifiers: residual k-means codes, collision ranks, the trie over them (only real
items), code tokens and their rows, the sequence objective over codes, codes saved with the checkpoint
and a catalog change refused, and a tiny end-to-end run."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers_recipes import load_recipe
from safetensors.torch import load_file

from genrec.config import load_config
from genrec.data import load_split
from genrec.errors import CheckpointError, ConfigError
from genrec.items.semantic_ids import (
    CODES_FILE,
    SemanticCodes,
    codes_for_run,
    kmeans,
    minilm_embeddings,
    residual_codes,
    with_collision_rank,
)
from genrec.prompts.encoding import IGNORE_INDEX
from genrec.recommender import Recommender, prepare

REPO = Path(__file__).resolve().parents[1]
SEMANTIC_TEMPLATE = REPO / "prompts" / "next_item_semantic.yaml"


def semantic(overrides: list[str], *extra: str) -> list[str]:
    """Semantic ids on the toy catalog (30 items): 2 levels x 4 codes, so code paths collide and need ranks."""
    kept = [o for o in overrides if not o.startswith("prompt.template=")]
    return kept + [f"prompt.template={SEMANTIC_TEMPLATE}", "prompt.chat=off", "items.identifier=semantic",
                   "items.semantic_source=llm", "items.semantic_levels=2", "items.semantic_codebook=4",
                   "train.objective=sequence", *extra]


@pytest.fixture()
def semantic_setup(tiny_overrides):
    return prepare(load_config(None, semantic(tiny_overrides)))


# ---- 1. quantisation ---------------------------------------------------------------------------------------

def test_kmeans_finds_separated_clusters_and_uses_every_code():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(20, 2, generator=gen) for c in centers]).double()
    assign, centroids = kmeans(x, 3, torch.Generator().manual_seed(1))
    groups = [set(assign[i * 20:(i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3  # each blob one code, all distinct
    for i, c in enumerate(centers):
        assert torch.allclose(centroids[assign[i * 20]], c.double(), atol=0.1)
    # more codes than natural clusters: none stays empty
    assign, _ = kmeans(x, 8, torch.Generator().manual_seed(1))
    assert sorted(set(assign.tolist())) == list(range(8))


def test_residual_codes_are_seeded_and_refine_level_by_level():
    x = torch.nn.functional.normalize(torch.randn(200, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    a = residual_codes(x, 3, 8, seed=5)
    assert a.shape == (200, 3) and int(a.min()) >= 0 and int(a.max()) < 8
    assert torch.equal(a, residual_codes(x, 3, 8, seed=5))
    assert not torch.equal(a, residual_codes(x, 3, 8, seed=6))
    # each level explains more: reconstruction error falls as levels are added
    errors = []
    for levels in (1, 2, 3):
        gen = torch.Generator().manual_seed(5)
        residual = x.double()
        for _ in range(levels):
            assign, centroids = kmeans(residual, 8, gen)
            residual = residual - centroids[assign]
        errors.append(residual.pow(2).sum().item())
    assert errors[0] > errors[1] > errors[2]


def test_collision_rank_makes_every_code_unique():
    codes = torch.tensor([[1, 2], [1, 2], [0, 3], [1, 2], [0, 3], [2, 2]])
    ranked = with_collision_rank(codes)
    assert ranked == [(1, 2, 0), (1, 2, 1), (0, 3, 0), (1, 2, 2), (0, 3, 1), (2, 2, 0)]
    assert len(set(ranked)) == len(ranked)


def test_minilm_embeddings_put_related_titles_close():
    x = minilm_embeddings(["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", "Heat (1995)"])
    assert x.shape == (4, 384)
    assert torch.allclose(x.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(x[2], x[3], atol=1e-5)  # deterministic
    assert float(x[0] @ x[1]) > float(x[0] @ x[2]) + 0.1


# ---- 2. identifiers, tokens and the trie --------------------------------------------------------------------

def test_semantic_setup_codes_tokens_and_trie(semantic_setup):
    setup = semantic_setup
    codes, catalog, index, tok = setup.codes, setup.split.catalog, setup.index, setup.tokenizer
    assert codes.width == 3 and len(codes.codes) == len(catalog) == 30
    assert len(set(codes.codes)) == 30
    assert codes.collisions() > 0  # 30 items on 16 paths: the rank level is needed
    assert all(0 <= c < 4 for code in codes.codes for c in code[:2])
    for item, code in zip(catalog.items, codes.codes):
        name = item.identifier("semantic")
        assert name == "".join(f"<{'abc'[lvl]}_{c}>" for lvl, c in enumerate(code))
        ids = tok(name, add_special_tokens=False)["input_ids"]
        assert len(ids) == 3 and set(ids) <= set(setup.item_tokens)
        assert index.item_of(ids) == item.index  # the item's path ends at exactly that item
        assert catalog.find(name) is item
    # every sequence has the same length: no item's codes are a prefix of another's
    assert set(index.item_length.tolist()) == {3}
    assert len(setup.item_tokens) == len(codes.vocabulary()) == len(set(setup.item_tokens))
    # the trie admits only real items: per-position code sets (LC-Rec's decoder) would admit paths that name none
    per_level = [sorted({tok.convert_tokens_to_ids(codes.token_names(c)[lvl]) for c in codes.codes})
                 for lvl in range(3)]
    real = {tuple(tok(it.identifier("semantic"), add_special_tokens=False)["input_ids"]) for it in catalog.items}
    fake = [p for p in itertools.product(*per_level) if p not in real]
    assert fake  # such paths exist ...
    assert all(index.item_of(list(p)) is None for p in fake)  # ... and the trie rejects every one
    for p in fake:  # decoding cannot reach them: some step along the path is not allowed
        assert any(p[i] not in index.allowed_tokens(list(p[:i])) for i in range(3))


def test_code_token_rows_start_at_the_mean_of_their_items_titles(semantic_setup):
    setup = semantic_setup
    model = setup.load_model()
    emb = model.get_input_embeddings().weight.detach().float()
    old = min(setup.item_tokens)
    texts = setup.tokenizer([it.text for it in setup.split.catalog.items], add_special_tokens=False)["input_ids"]
    title_rows = torch.stack([emb[:old][torch.tensor(ids)].mean(0) for ids in texts])
    members = setup.codes.members()
    for name in setup.codes.vocabulary()[:6] + setup.codes.vocabulary()[-3:]:
        token = setup.tokenizer.convert_tokens_to_ids(name)
        expected = title_rows[torch.tensor(members[name])].mean(0)
        assert torch.allclose(emb[token], expected, atol=1e-5), name


def test_sequence_labels_cover_every_code_of_every_target_item(semantic_setup):
    setup = semantic_setup
    ex = next(e for e in setup.training_examples() if len(e.sequence) >= 4)
    enc = setup.encoder.encode(ex)
    labelled = [t for t in enc["labels"] if t != IGNORE_INDEX]
    expected = [t for item in ex.sequence[ex.sequence_from:]
                for t in setup.tokenizer(setup.split.catalog[item].identifier("semantic"),
                                         add_special_tokens=False)["input_ids"]]
    assert labelled == expected and len(labelled) == 3 * (len(ex.sequence) - ex.sequence_from)


def test_semantic_config_validation(toy_data_dir):
    base = [f"data.path={toy_data_dir}", "data.dataset=toy", "items.identifier=semantic"]
    with pytest.raises(ConfigError, match="semantic_levels"):
        load_config(None, base + ["items.semantic_levels=0"])
    with pytest.raises(ConfigError, match="semantic_source"):
        load_config(None, base + ["items.semantic_source=bert"])
    with pytest.raises(ConfigError, match="target_weighting"):
        load_config(None, base + ["train.objective=sequence", "train.target_weighting=inverse_popularity"])
    with pytest.raises(ConfigError, match="lora or dora"):
        load_config(None, base + ["adapter.method=ia3"])


def test_codes_are_reused_for_the_same_settings_and_rebuilt_for_new_ones(tiny_overrides):
    cfg = load_config(None, semantic(tiny_overrides))
    split = load_split(cfg)
    catalog = split.catalog
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=torch.Generator().manual_seed(0)), dim=-1)

    first = codes_for_run(split, cfg, None, embed)
    assert (Path(cfg.run.output_dir) / CODES_FILE).is_file() and calls == [30]
    again = codes_for_run(split, cfg, None, embed)
    assert again.codes == first.codes and calls == [30]  # read back, not rebuilt
    other = load_config(None, semantic(tiny_overrides, "items.semantic_codebook=3"))
    rebuilt = codes_for_run(split, other, None, embed)
    assert calls == [30, 30] and max(c[0] for c in rebuilt.codes) == 2
    loaded = SemanticCodes.load(Path(cfg.run.output_dir) / CODES_FILE)
    assert loaded.codes == rebuilt.codes and loaded.item_ids == [it.item_id for it in catalog.items]


# ---- 3. end to end: train, save codes with the checkpoint, evaluate, catalog change -------------------------

@pytest.fixture(scope="module")
def semantic_run(tiny_model_dir, toy_data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("semantic") / "run"
    overrides = semantic([f"run.output_dir={run}", f"data.path={toy_data_dir}", "data.dataset=toy",
                          "data.max_history=5", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                          "train.batch_size=4", "train.eval_users=6", "decode.batch_users=4"],
                         "data.sequence_stride=3", "train.epochs=6", "train.lr=3e-3", "train.warmup_ratio=0",
                         "train.log_every=5", "train.save_every=0", "adapter.dropout=0.0")
    load_recipe("finetune").main(overrides)
    results = load_recipe("evaluate").main(overrides)
    return run, overrides, results


def test_semantic_run_trains_only_code_rows_and_saves_codes(semantic_run):
    run, _, _ = semantic_run
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # per-level softmax: uniform over 4 codes is log 4 = 1.39 per position at the start
    assert len(losses) >= 4 and losses[0] == pytest.approx(1.39, abs=0.15), losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    adapter = run / "adapter"
    codes = SemanticCodes.load(adapter / CODES_FILE)
    assert codes.codes == SemanticCodes.load(run / CODES_FILE).codes
    config = json.loads((adapter / "adapter_config.json").read_text())
    n_codes = len(codes.vocabulary())
    assert config["trainable_token_indices"] == list(range(400, 400 + n_codes))  # the code tokens, nothing else
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    delta = next(v for k, v in saved.items() if "trainable_tokens_delta" in k)
    assert delta.shape[0] == n_codes
    assert not any(v.ndim == 2 and v.shape[0] >= 400 for v in saved.values())


def test_semantic_evaluation_ranks_only_real_distinct_items(semantic_run):
    run, _, results = semantic_run
    m = results["metrics"]
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0
    rows = [json.loads(x) for x in (run / "rankings.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(len(r["items"]) == 20 == len(set(r["items"])) for r in rows)


def test_inference_uses_the_checkpoint_codes_and_refuses_a_changed_catalog(semantic_run, tmp_path):
    run, overrides, _ = semantic_run
    cfg = load_config(None, overrides)
    (run / CODES_FILE).unlink()  # the run's own copy is gone: only the checkpoint's may be used
    rec, folder = Recommender.load(cfg)
    assert rec.setup.codes.codes == SemanticCodes.load(folder / CODES_FILE).codes
    assert not (run / CODES_FILE).exists()
    # a catalog with one item fewer: the codes no longer match it
    data = Path(cfg.data.path)
    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    inter = changed / "toy.inter"
    lines = inter.read_text().splitlines()
    dropped = lines[1].split("\t")[1]
    inter.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[1] != dropped]) + "\n")
    moved = load_config(None, overrides + [f"data.path={changed}"])
    with pytest.raises(CheckpointError, match=r"catalog changed.*coded item\(s\) no longer in the catalog"):
        Recommender.load(moved)


def test_semantic_text_formats_item_fields_and_names_a_missing_one(toy_data_dir):
    from genrec.items.semantic_ids import embedded_texts

    catalog = load_split(load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy"])).catalog
    texts = embedded_texts(catalog, "{movie_title}; genres: {class}")
    assert texts[0] == f"{catalog[0].fields['movie_title']}; genres: Drama"
    assert embedded_texts(catalog, None) == [it.text for it in catalog.items]
    with pytest.raises(ConfigError, match=r"items.semantic_text.*'genre'.*fields: class, item_id"):
        embedded_texts(catalog, "{genre}")


def test_identifier_benchmark_kinds_are_valid_configs():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from identifiers import BASE, KINDS

    for kind, overrides in KINDS.items():
        cfg = load_config(str(REPO / BASE), [f"prompt.template={REPO}/" + o.split("=", 1)[1] if o.startswith("prompt.template=")
                                             else o for o in overrides])
        assert cfg.items.identifier == {"collaborative": "semantic", "sequential": "id"}.get(kind, kind)
        assert cfg.items.id_order == ("sequential" if kind == "sequential" else "original")
        assert cfg.train.objective == "sequence"
        assert cfg.train.batch_size * cfg.train.grad_accum == 16  # the same updates for every kind


def test_collaborative_embeddings_come_from_training_interactions_only():
    from genrec.data.catalog import Catalog, Item
    from genrec.data.splits import Split
    from genrec.items.semantic_ids import collaborative_embeddings

    catalog = Catalog([Item(i, str(i), f"t{i}", f"item_{i}") for i in range(6)])
    # items 0,1 always watched together, 2,3 together; 4 only ever a held-out item; 5 never
    seqs = {"a": [0, 1, 2, 4], "b": [1, 0, 5, 3], "c": [2, 3, 0, 1, 4, 5], "d": [3, 2, 1, 4]}
    x = collaborative_embeddings(Split(catalog, {u: list(s) for u, s in seqs.items()}), dim=4)
    assert x.shape == (6, 4)
    assert float(x[0] @ x[1]) > 0.99 and float(x[2] @ x[3]) > 0.99
    assert float(x[0] @ x[2]) < float(x[0] @ x[1]) - 0.1
    # a user's last two items are validation and test: moving them changes nothing
    moved = {u: s[:-2] + [5, 4] if u == "d" else s for u, s in seqs.items()}
    assert torch.allclose(x, collaborative_embeddings(Split(catalog, moved), dim=4), atol=1e-6)


def test_each_code_position_competes_only_with_codes_of_its_level(semantic_setup):
    from genrec.training.batching import collate
    from genrec.training.loss import completion_loss, label_logits

    finetune = load_recipe("finetune")
    setup = semantic_setup
    model = setup.load_model().eval()
    ex = next(e for e in setup.training_examples() if len(e.sequence) >= 3)
    batch = collate([setup.encoder.encode(ex)], setup.tokenizer.pad_token_id)
    candidates = torch.tensor(sorted(setup.item_tokens))
    levels = finetune.candidate_levels(setup, candidates)
    names = setup.tokenizer.convert_ids_to_tokens(candidates.tolist())
    assert levels.tolist() == ["abc".index(n[1]) for n in names]
    with torch.no_grad():
        plain, targets = label_logits(model, batch, candidates)
        grouped, same = label_logits(model, batch, candidates, levels)
        assert torch.equal(targets, same)
        own = levels[None, :] == levels[targets][:, None]
        assert torch.equal(grouped[own], plain[own]) and bool(torch.isinf(grouped[~own]).all())
        expected = torch.nn.functional.cross_entropy(plain.masked_fill(~own, float("-inf")), targets)
        assert float(completion_loss(model, batch, candidates, groups=levels)) == pytest.approx(float(expected))
        assert float(completion_loss(model, batch, candidates, groups=levels)) < float(completion_loss(model, batch, candidates))
