"""Decoding settings as a frozen value (genrec.decoding.options): read once from the config, varied per call by
``dataclasses.replace`` without touching the config, and the decoding-prior extension point."""

from __future__ import annotations

import copy
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
import torch

from genrec.causal.popularity import smoothed
from genrec.causal.priors import CausalPriors
from genrec.config import load_config
from genrec.decoding.options import DecodeOptions
from genrec.decoding.search import constrained_topk
from genrec.evaluation.protocol import rank_users
from genrec.recommender import Recommender


@pytest.fixture(scope="module")
def tiny(tiny_title_setup):
    return tiny_title_setup


def users_and_examples(setup, n: int = 5):
    users = setup.split.eval_users[:n]
    return users, [setup.split.example(u, "test", 5) for u in users], [setup.split.seen(u, "test") for u in users]


def assert_same_ranking(got, want):
    """Same items in the same order, scores equal up to the last bits a different batching may move."""
    assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]
    assert [s for r in got for _, s in r] == pytest.approx([s for r in want for _, s in r], abs=1e-4)


def test_options_are_read_once_from_the_config_and_frozen(toy_data_dir):
    cfg = load_config(None, [f"data.path={toy_data_dir}", "decode.num_beams=30", "decode.length_penalty=0.5",
                             "decode.batch_users=3", "decode.exclude_seen=false", "decode.trie_normalize=true",
                             "decode.popularity_gamma=-0.2", "decode.contrastive_lambda=0.1",
                             "decode.propensity_mix=0.05", "decode.propensity_temperature=1.5", "eval.ips_clip=20",
                             "reason.max_new_tokens=9"])
    options = DecodeOptions.from_config(cfg)
    assert options == DecodeOptions(num_beams=30, length_penalty=0.5, batch_users=3, exclude_seen=False,
                                    trie_normalize=True, popularity_gamma=-0.2, contrastive_lambda=0.1,
                                    propensity_mix=0.05, ips_clip=20.0, rationale_max_new_tokens=9,
                                    propensity_temperature=1.5)
    with pytest.raises(FrozenInstanceError):
        options.num_beams = 5
    cfg.decode.num_beams = 40  # a later change to the config is not seen by the value built from it
    assert options.num_beams == 30


def test_rank_with_replaced_options_leaves_the_config_and_the_recommender_as_they_were(tiny):
    setup, model = tiny
    before = copy.deepcopy(setup.cfg)
    rec = Recommender(model, setup)
    users, examples, seen = users_and_examples(setup)
    plain = rec.rank(examples, seen, 10)
    gamma = 0.8
    tilted = rec.rank(examples, seen, 10, replace(rec.options, popularity_gamma=gamma, batch_users=2))
    assert setup.cfg == before and rec.options == DecodeOptions.from_config(setup.cfg)
    assert rec.rank(examples, seen, 10).items == plain.items  # the default is back on the next call
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    prior = gamma * setup.index.log_mass(smoothed(setup.split.train_popularity()))
    want = constrained_topk(model, prompts, setup.index, k=10, num_beams=20, excluded=seen,
                            pad_id=setup.tokenizer.pad_token_id, node_prior=prior)
    assert_same_ranking(tilted.items, want)
    assert tilted.items != plain.items
    assert plain.rationales is None  # the template writes no rationale


@pytest.mark.parametrize("change", [{"num_beams": 12}, {"length_penalty": 1.0}, {"trie_normalize": True}])
def test_each_search_option_reaches_the_search(tiny, change):
    setup, model = tiny
    rec = Recommender(model, setup)
    _, examples, seen = users_and_examples(setup)
    options = replace(rec.options, **change)
    got = rec.rank(examples, seen, 10, options).items
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    want = constrained_topk(model, prompts, setup.index, k=10, num_beams=options.num_beams, excluded=seen,
                            length_penalty=options.length_penalty, pad_id=setup.tokenizer.pad_token_id,
                            trie_normalize=options.trie_normalize)
    assert_same_ranking(got, want)
    if "num_beams" not in change:  # 12 beams may keep the same lists; the score definitions change them
        assert got != rec.rank(examples, seen, 10).items


def test_rank_users_takes_exclude_seen_and_batching_from_the_options(tiny):
    setup, model = tiny
    rec = Recommender(model, setup)
    users, _, seen = users_and_examples(setup, 6)
    k = setup.index.num_items  # every item: the lists show exactly which items were admitted
    options = replace(rec.options, num_beams=k)
    kept = rank_users(rec, users, "test", k, options=replace(options, exclude_seen=False, batch_users=4))
    left_out = rank_users(rec, users, "test", k, options=options)
    for user, own in zip(users, seen):
        assert {i for i, _ in kept[user]} == set(range(k))
        assert {i for i, _ in left_out[user]} == set(range(k)) - own
    assert setup.cfg.decode.exclude_seen and setup.cfg.decode.batch_users == 8


def test_the_ranking_adds_whatever_prior_it_is_given(tiny):
    """The extension point: the Recommender asks its prior for a node tensor given the options, knowing nothing
    of what it holds, and the search adds that tensor's leaf-minus-root."""
    setup, model = tiny
    values = torch.tensor(np.random.default_rng(3).normal(size=setup.index.num_nodes), dtype=torch.float32)

    class Fixed:
        def __init__(self):
            self.asked = []

        def node_prior(self, options):
            self.asked.append(options)
            return values

    prior = Fixed()
    rec = Recommender(model, setup, prior=prior)
    _, examples, seen = users_and_examples(setup)
    options = replace(rec.options, batch_users=2)
    got = rec.rank(examples, seen, 10, options).items
    assert len(prior.asked) == 3 and all(o is options for o in prior.asked)  # once per batch of 2
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    want = constrained_topk(model, prompts, setup.index, k=10, num_beams=20, excluded=seen,
                            pad_id=setup.tokenizer.pad_token_id, node_prior=values)
    assert_same_ranking(got, want)


def test_causal_prior_is_built_from_the_options_values_and_kept_for_the_same_values(tiny):
    setup, model = tiny
    priors = CausalPriors(model, setup)
    options = DecodeOptions.from_config(setup.cfg)
    assert priors.node_prior(options) is None  # every term off
    mixed = replace(options, propensity_mix=0.5)
    first = priors.node_prior(mixed)
    assert priors.node_prior(replace(options, propensity_mix=0.5)) is first  # equal values: no rebuild
    clipped = priors.node_prior(replace(mixed, ips_clip=2.0))
    assert not torch.equal(clipped, first)  # eval.ips_clip caps w(item) inside the bonus
    tempered = priors.node_prior(replace(mixed, propensity_temperature=2.0))
    assert torch.allclose(tempered, 2 * first)  # the mix's p = softmax(score / T): the bonus is T * log(1 + beta w)
    assert priors.node_prior(replace(options, propensity_temperature=2.0)) is None  # T alone changes nothing
    both = priors.node_prior(replace(mixed, popularity_gamma=-0.3))
    assert torch.allclose(both, first - 0.3 * priors.popularity_log_mass)
    assert torch.equal(priors.node_prior(mixed), first)  # rebuilt after other values: the same tensor again
