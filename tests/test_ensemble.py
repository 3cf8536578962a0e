"""Ensembles of adapters (train.ensemble): member configs, the mean-log-probability ranking, the
checkpoint layout, and a tiny run that halts, resumes, assembles and evaluates."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
import yaml
from helpers_recipes import load_recipe
from test_atomic import atomic

from genrec.config import load_config
from genrec.decoding.ensemble import MANIFEST, ensemble_topk, member_configs, member_folders
from genrec.decoding.search import constrained_topk
from genrec.errors import CheckpointError, ConfigError
from genrec.recommender import prepare


def test_member_configs_differ_in_seed_and_folder_only(tiny_overrides, tmp_path):
    cfg = load_config(None, atomic(tiny_overrides, "train.ensemble=3", "run.seed=7"))
    members = member_configs(cfg)
    assert members[0] is cfg
    assert [m.run.seed for m in members] == [7, 1007, 2007]
    run = tmp_path / "run"
    assert [m.run.output_dir for m in members[1:]] == [str(run / "members" / "1"), str(run / "members" / "2")]
    assert all(m.data.cache_dir == str(run / "cache") for m in members[1:])  # one tokenization for all
    assert [m.train.ensemble for m in members] == [3, 1, 1]
    for m in members[1:]:  # everything else as configured
        assert asdict(m.train) == {**asdict(cfg.train), "ensemble": 1}
        assert m.adapter == cfg.adapter and m.items == cfg.items and m.prompt == cfg.prompt
    assert cfg.run.seed == 7 and cfg.data.cache_dir is None  # the run's own config is untouched


def test_ensemble_config_errors(tiny_overrides):
    with pytest.raises(ConfigError, match="train.ensemble' must be >= 1"):
        load_config(None, atomic(tiny_overrides, "train.ensemble=0"))
    with pytest.raises(ConfigError, match="decode.members' must be >= 1"):
        load_config(None, atomic(tiny_overrides, "decode.members=0"))
    with pytest.raises(ConfigError, match="items.identifier=atomic"):
        load_config(None, [*tiny_overrides, "train.ensemble=2"])  # titles: several tokens per item


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, toy_data_dir, tmp_path_factory):
    """An atomic setup, the untuned base, and two different adapters (LoRA and item rows) saved as folders."""
    from genrec.config import AdapterConfig
    from genrec.model.loading import attach_adapter

    cfg = load_config(None, atomic([f"data.path={toy_data_dir}", "data.dataset=toy", "data.max_history=5",
                                    f"model.name_or_path={tiny_model_dir}", "model.dtype=float32"]))
    setup = prepare(cfg)
    folders = []
    for seed in (0, 1):
        model = attach_adapter(setup.load_model(), AdapterConfig(dropout=0.0), setup.item_tokens)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn_like(p))
        folders.append(tmp_path_factory.mktemp(f"member{seed}"))
        model.save_pretrained(str(folders[-1]), save_embedding_layers=False)
    return setup, setup.load_model().eval(), folders


def merged(setup, folder):
    from genrec.model.loading import load_adapter

    return load_adapter(setup.load_model(), folder).merge_and_unload().eval()


def prompts_and_exclusions(setup, n: int = 6):
    users = setup.split.eval_users[:n]
    examples = [setup.split.example(u, "test", 5) for u in users]
    return [setup.encoder.prompt_ids(ex) for ex in examples], [setup.split.seen(u, "test") for u in users]


@pytest.mark.parametrize("num_beams, length_penalty, trie_normalize", [(10, 0.0, False), (10, 0.0, True),
                                                                       (40, 1.0, False), (10, 2.0, True)])
def test_ensemble_of_one_ranks_like_the_beam_search(two_models, num_beams, length_penalty, trie_normalize):
    """Every decoding option the search takes gives the ensemble's ranking the same meaning: trie_normalize by
    renormalising over the catalog, num_beams and length_penalty by having nothing to change (one token per
    item)."""
    setup, model, _ = two_models
    prompts, excluded = prompts_and_exclusions(setup)
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    prior = setup.index.log_mass(torch.arange(1, setup.index.num_items + 1, dtype=torch.float64))
    for node_prior in (None, 0.7 * prior):
        expected = constrained_topk(model, prompts, setup.index, k=10, num_beams=num_beams, excluded=excluded,
                                    length_penalty=length_penalty, pad_id=setup.tokenizer.pad_token_id,
                                    node_prior=node_prior, trie_normalize=trie_normalize)
        got = ensemble_topk(model, prompts, setup.index, 10, excluded, setup.tokenizer.pad_token_id, node_prior,
                            trie_normalize=trie_normalize)
        for want, have, seen in zip(expected, got, excluded):
            assert [i for i, _ in have] == [i for i, _ in want]
            assert [s for _, s in have] == pytest.approx([s for _, s in want], abs=1e-4)
            assert not seen & {i for i, _ in have}


def test_ensemble_ranks_by_the_mean_log_probability(two_models):
    """Two adapters on one base model, switched per forward, rank by the mean of what each adapter merged
    into its own copy of the base gives, one unpadded prompt at a time."""
    from genrec.decoding.ensemble import member_adapter
    from genrec.model.loading import load_adapter

    setup, _, folders = two_models
    prompts, excluded = prompts_and_exclusions(setup)
    tokens = torch.tensor([seq[0] for seq in setup.index.sequences])
    shared = setup.load_model()
    for k, folder in enumerate(folders):
        shared = load_adapter(shared, folder, name=member_adapter(k))
    names = [member_adapter(0), member_adapter(1)]
    shared.set_adapter(names[0])
    shared.eval()
    assert sum(1 for m in shared.modules() if type(m).__name__ == "LlamaForCausalLM") == 1  # one base model
    got = ensemble_topk(shared, prompts, setup.index, 10, excluded, setup.tokenizer.pad_token_id, adapters=names)
    assert shared.active_adapters == [names[0]]  # the first member is active again
    separate = [merged(setup, f) for f in folders]
    for prompt, seen, have in zip(prompts, excluded, got):
        ids = torch.tensor([prompt])  # one prompt at a time, unpadded: the reference
        with torch.no_grad():
            mean = sum(torch.log_softmax(m(input_ids=ids).logits[0, -1].float(), -1)[tokens] for m in separate) / 2
        mean[sorted(seen)] = float("-inf")
        best, items = mean.topk(10)
        assert [i for i, _ in have] == items.tolist()
        assert [s for _, s in have] == pytest.approx(best.tolist(), abs=1e-4)
    alone = ensemble_topk(separate[0], prompts, setup.index, 10, excluded, setup.tokenizer.pad_token_id)
    assert got != alone  # the second member changes the ranking


def test_an_ensemble_recommender_ranks_by_the_options_it_is_given(two_models):
    """decode.trie_normalize reaches an ensemble's ranking: each member's log p(item | the output is a catalog
    item), averaged; the config's own setting (off) stays as it was."""
    from genrec.decoding.ensemble import member_adapter
    from genrec.model.loading import load_adapter
    from genrec.recommender import Recommender

    setup, _, folders = two_models
    users = setup.split.eval_users[:6]
    examples = [setup.split.example(u, "test", 5) for u in users]
    excluded = [setup.split.seen(u, "test") for u in users]
    shared = setup.load_model()
    names = [member_adapter(k) for k in range(len(folders))]
    for name, folder in zip(names, folders):
        shared = load_adapter(shared, folder, name=name)
    shared.set_adapter(names[0])
    rec = Recommender(shared.eval(), setup, names)
    plain = rec.rank(examples, excluded, 10).items
    normalized = rec.rank(examples, excluded, 10, replace(rec.options, trie_normalize=True)).items
    assert not setup.cfg.decode.trie_normalize and not rec.options.trie_normalize
    tokens = torch.tensor([seq[0] for seq in setup.index.sequences])
    separate = [merged(setup, f) for f in folders]
    for ex, seen, have, unnormalized in zip(examples, excluded, normalized, plain):
        ids = torch.tensor([setup.encoder.prompt_ids(ex)])
        with torch.no_grad():
            logps = [torch.log_softmax(m(input_ids=ids).logits[0, -1].float(), -1)[tokens] for m in separate]
        mean = sum(logp - logp.logsumexp(0) for logp in logps) / len(logps)
        mean[sorted(seen)] = float("-inf")
        best, items = mean.topk(10)
        assert [i for i, _ in have] == items.tolist() == [i for i, _ in unnormalized]  # a shift per prompt
        assert [s for _, s in have] == pytest.approx(best.tolist(), abs=1e-4)
        assert [s for _, s in have] != pytest.approx([s for _, s in unnormalized], abs=1e-2)


def test_ensemble_needs_one_token_items(tiny_title_setup):
    setup, model = tiny_title_setup
    with pytest.raises(CheckpointError, match="one-token items"):
        ensemble_topk(model, [[1, 2, 3]], setup.index, 5, adapters=["member0", "member1"])


def test_member_folders_checks_the_manifest(tmp_path):
    assert member_folders(tmp_path) == [tmp_path]  # no manifest: a single adapter
    (tmp_path / MANIFEST).write_text(json.dumps({"members": ["members/1"]}))
    with pytest.raises(CheckpointError, match="members/1, which holds no adapter"):
        member_folders(tmp_path)
    (tmp_path / "members" / "1").mkdir(parents=True)
    (tmp_path / "members" / "1" / "adapter_config.json").write_text("{}")
    assert member_folders(tmp_path) == [tmp_path, tmp_path / "members" / "1"]
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a genrec ensemble manifest"):
        member_folders(tmp_path)


def test_ensemble_run_halts_resumes_assembles_and_evaluates(tiny_overrides, tmp_path):
    from genrec.recommender import Recommender

    run = tmp_path / "run"
    overrides = atomic(tiny_overrides, "train.ensemble=2", "train.max_steps=4", "train.warmup_ratio=0",
                       "train.lr=3e-3", "adapter.dropout=0.0", "run.seed=3")
    finetune = load_recipe("finetune")
    finetune.main([*overrides, "train.halt_after_steps=2"])
    assert not (run / "adapter").exists() and not (run / "members").exists()  # member 0 halted: nothing more

    finetune.main([*overrides, "run.resume=true"])
    adapter = run / "adapter"
    manifest = json.loads((adapter / MANIFEST).read_text())
    assert manifest["members"] == ["members/1"] and manifest["seeds"] == [3, 1003]
    member = adapter / "members" / "1"
    assert (member / "adapter_model.safetensors").is_file() and not (member / "genrec_state").exists()
    assert yaml.safe_load((run / "members" / "1" / "config.yaml").read_text())["run"]["seed"] == 1003
    assert (member / "adapter_model.safetensors").read_bytes() != (adapter / "adapter_model.safetensors").read_bytes()
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert steps[-1] == 4  # member 0 went on from its checkpoint to the end

    rec, folder = Recommender.load(load_config(None, overrides))
    assert folder == adapter and len(rec.members) == 2
    first, _ = Recommender.load(load_config(None, [*overrides, "decode.members=1"]))
    assert len(first.members) == 1
    results = load_recipe("evaluate").main(overrides)
    assert results["protocol"]["adapter_members"] == 2
    assert results["metrics"]["valid_item_rate"] == 1.0 and results["metrics"]["duplicate_rate"] == 0.0
    single = load_recipe("evaluate").main([*overrides, f"run.checkpoint={member}",
                                           f"run.output_dir={tmp_path / 'member1'}"])
    assert single["protocol"]["adapter_members"] == 1


def test_ensemble_recipe_is_the_atomic_recipe_three_times():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "ml100k"
    single = load_config(configs / "smollm2_atomic.yaml").to_dict()
    ensemble = load_config(configs / "smollm2_atomic_ensemble.yaml").to_dict()
    assert ensemble["train"]["ensemble"] == 3 and single["train"]["ensemble"] == 1
    for cfg in (single, ensemble):
        cfg["train"].pop("ensemble")
        cfg["run"].pop("output_dir")
    assert ensemble == single  # member 0 of the ensemble is the single-run recipe
