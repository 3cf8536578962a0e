"""Popularity as a confounder: training weights from training data only, the telescoping decoding prior,
the weighted loss, and the popularity-bias metrics, against hand-computed values."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers_recipes import load_recipe

from genrec.causal.calibration import fit_temperature, masked_scores, target_nll
from genrec.causal.popularity import (
    PopularityPriorLoss,
    TargetWeights,
    candidate_prior,
    inverse_popularity_weights,
    smoothed,
    training_weights,
)
from genrec.config import load_config
from genrec.data import load_split
from genrec.data.splits import Example, Split
from genrec.decoding.options import DecodeOptions
from genrec.decoding.search import constrained_topk, score_items
from genrec.errors import ConfigError
from genrec.evaluation.bias import (bias_metrics, head_items, paired_relative_ci, paired_relative_ci_per_user,
                                    per_user_ndcg, propensity_weights)
from genrec.prompts.encoding import IGNORE_INDEX
from genrec.recommender import prepare
from genrec.training.batching import collate
from genrec.training.loss import CrossEntropy, completion_loss, training_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_title_setup):
    return tiny_title_setup


# ---- training weights --------------------------------------------------------------------------------------

def test_inverse_popularity_weights_hand_computed():
    # raw (pop+1)^-1 = [1, 1/2, 1/4]; mean over the 4 interactions = (0*1 + 1/2 + 3/4) / 4 = 0.3125
    assert inverse_popularity_weights(np.array([0, 1, 3]), clip=100).tolist() == pytest.approx([3.2, 1.6, 0.8])
    assert inverse_popularity_weights(np.array([0, 1, 3]), clip=2).tolist() == pytest.approx([2.0, 1.6, 0.8])
    # power 0.5: raw [1, 2^-.5, 1/2]; mean (2^-.5 + 3/2) / 4
    mean = (2 ** -0.5 + 1.5) / 4
    assert inverse_popularity_weights(np.array([0, 1, 3]), power=0.5, clip=100).tolist() == pytest.approx(
        [1 / mean, 2 ** -0.5 / mean, 0.5 / mean])
    # mean 1 over training interactions when nothing is clipped
    pop = np.array([5, 9, 1, 40, 2])
    w = inverse_popularity_weights(pop, clip=1e9)
    assert (w * pop).sum() / pop.sum() == pytest.approx(1.0)


def test_weights_and_propensities_come_from_the_training_part_only(toy_data_dir):
    cfg = load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy", "train.target_weighting=inverse_popularity"])
    split = load_split(cfg)
    before = training_weights(cfg, split, None).item_weights
    # move every user's validation and test item to item 0: training counts, hence weights, must not move
    moved = Split(split.catalog, {u: s[:-2] + [0, 0] if len(s) >= 3 else s for u, s in split.sequences.items()})
    assert np.array_equal(moved.train_popularity(), split.train_popularity())
    assert np.array_equal(training_weights(cfg, moved, None).item_weights, before)
    # ... while a change in a training item does move them
    user = next(u for u, s in split.sequences.items() if len(s) >= 5)
    changed = dict(split.sequences)
    changed[user] = [0] * 3 + split.sequences[user][3:]
    assert not np.array_equal(training_weights(cfg, Split(split.catalog, changed), None).item_weights, before)


def test_target_weights_per_label_position():
    weights = np.array([0.5, 2.0, 4.0])
    titles = TargetWeights(weights)  # every completion token of a row is its target's
    assert titles.row([IGNORE_INDEX, IGNORE_INDEX, 7, 8], target=1) == [0.0, 0.0, 2.0, 2.0]
    atomic = TargetWeights(weights, item_tokens=[100, 101, 102])  # each label is an item token
    assert atomic.row([IGNORE_INDEX, 101, 102, IGNORE_INDEX, 100], target=0) == [0.0, 2.0, 4.0, 0.0, 0.5]


def test_weighted_loss_is_the_weighted_mean_of_token_cross_entropies(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
            {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, -100, 14]}]
    with torch.no_grad():
        plain = completion_loss(model, collate(rows, pad_id=0)).item()
        ones = [{**r, "weights": [0.0 if t == -100 else 1.0 for t in r["labels"]]} for r in rows]
        assert completion_loss(model, collate(ones, pad_id=0)).item() == pytest.approx(plain, rel=1e-6)
        uneven = [{**rows[0], "weights": [0, 0, 0, 0, 3.0, 3.0]}, {**rows[1], "weights": [0, 0, 0, 0.5]}]
        weighted = completion_loss(model, collate(uneven, pad_id=0)).item()
        per_token = []
        for r in rows:
            logits = model(input_ids=torch.tensor([r["input_ids"]])).logits[0, :-1]
            per_token += F.cross_entropy(logits, torch.tensor(r["labels"][1:]), reduction="none")[
                torch.tensor(r["labels"][1:]) != -100].tolist()
    assert weighted == pytest.approx((3 * per_token[0] + 3 * per_token[1] + 0.5 * per_token[2]) / 3, rel=1e-5)
    assert weighted != pytest.approx(plain, rel=1e-3)


def test_candidate_prior_is_the_scaled_log_smoothed_count_of_each_columns_item():
    # item 0 -> token 102, item 1 -> 100, item 2 -> 101; the softmax columns are the sorted tokens
    prior = candidate_prior(np.array([0, 1, 3]), [102, 100, 101], torch.tensor([100, 101, 102]), strength=0.5)
    assert prior.tolist() == pytest.approx([0.5 * math.log(2), 0.5 * math.log(4), 0.5 * math.log(1)])


def test_popularity_prior_is_added_to_the_item_softmax_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    candidates = torch.tensor([9, 10, 14, 20, 21])
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
            {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, -100, 14]}]
    prior = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
    with torch.no_grad():
        batch = collate(rows, pad_id=0)
        plain = completion_loss(model, batch, candidates).item()
        adjusted = completion_loss(model, batch, candidates, terms=[PopularityPriorLoss(prior)]).item()
        # a constant shift of every logit leaves a softmax alone
        shifted = completion_loss(model, batch, candidates, terms=[PopularityPriorLoss(torch.full((5,), 4.0))]).item()
        assert shifted == pytest.approx(plain)
        logits, targets = [], []
        for r in rows:
            full = model(input_ids=torch.tensor([r["input_ids"]])).logits[0, :-1][:, candidates]
            keep = torch.tensor(r["labels"][1:]) != -100
            logits.append(full[keep])
            targets += [int(torch.searchsorted(candidates, torch.tensor(t))) for t in r["labels"][1:] if t != -100]
    by_hand = torch.cat(logits), torch.tensor(targets)
    assert plain == pytest.approx(F.cross_entropy(*by_hand).item(), rel=1e-5)
    assert adjusted == pytest.approx(F.cross_entropy(by_hand[0] + prior, by_hand[1]).item(), rel=1e-5)
    assert adjusted != pytest.approx(plain, rel=1e-3)


# ---- decoding prior ----------------------------------------------------------------------------------------

def test_log_mass_telescopes_to_the_item_popularity(tiny):
    setup, _ = tiny
    index = setup.index
    assert index.max_depth > 2  # titles: several steps per item, so the telescoping is exercised
    w = smoothed(setup.split.train_popularity())
    mass = index.log_mass(w)
    for item in range(index.num_items):
        path = [0] + [n for n in index.item_path[item].tolist() if n >= 0]
        steps = sum(mass[b].item() - mass[a].item() for a, b in zip(path, path[1:]))
        assert steps == pytest.approx(math.log(w[item]) - math.log(w.sum()), abs=1e-5)
    # a node's mass is the sum over the items below it
    node = index.item_path[0, 0].item()
    below = [i for i in range(index.num_items) if node in index.item_path[i].tolist()]
    assert mass[node].item() == pytest.approx(math.log(w[below].sum()), abs=1e-5)
    with pytest.raises(ValueError):
        index.log_mass(np.zeros(index.num_items))


@pytest.mark.parametrize("gamma", [0.8, -0.5])
def test_popularity_prior_inside_beam_search_equals_exhaustive_adjusted_scores(tiny, gamma):
    """Wide beams prune nothing: the result must be the exact top-k of log p(item) + gamma * log pop(item)
    (+ a constant); negative gamma (scores may rise along a path) switches early stopping off."""
    setup, model = tiny
    w = smoothed(setup.split.train_popularity())
    prior = gamma * setup.index.log_mass(w)
    bonus = torch.tensor(gamma * (np.log(w) - np.log(w.sum())), dtype=torch.float32)
    for user in setup.split.eval_users[:4]:
        prompt = setup.encoder.prompt_ids(setup.split.example(user, "test", 5))
        seen = setup.split.seen(user, "test")
        got = constrained_topk(model, [prompt], setup.index, k=10, num_beams=setup.index.num_items, excluded=[seen],
                               pad_id=setup.tokenizer.pad_token_id, node_prior=prior)[0]
        ref = score_items(model, prompt, setup.index) + bonus
        ref[list(seen)] = float("-inf")
        top = torch.topk(ref, 10)
        assert [i for i, _ in got] == top.indices.tolist()
        assert [s for _, s in got] == pytest.approx(top.values.tolist(), abs=1e-4)
        plain = constrained_topk(model, [prompt], setup.index, k=10, num_beams=setup.index.num_items,
                                 excluded=[seen], pad_id=setup.tokenizer.pad_token_id)[0]
        assert [i for i, _ in plain] != [i for i, _ in got] or gamma == 0


def test_max_below_telescopes_to_the_item_value_and_never_rises(tiny):
    setup, _ = tiny
    index = setup.index
    values = np.random.default_rng(0).normal(size=index.num_items)
    best = index.max_below(values)
    assert best[0].item() == pytest.approx(values.max(), abs=1e-6)
    for item in range(index.num_items):
        path = [0] + [n for n in index.item_path[item].tolist() if n >= 0]
        steps = [best[b].item() - best[a].item() for a, b in zip(path, path[1:])]
        assert sum(steps) == pytest.approx(values[item] - values.max(), abs=1e-5)
        assert max(steps) <= 1e-6  # a node's best is at most its parent's: the search's early stop stays exact
    node = index.item_path[0, 0].item()
    below = [i for i in range(index.num_items) if node in index.item_path[i].tolist()]
    assert best[node].item() == pytest.approx(values[below].max(), abs=1e-6)
    with pytest.raises(ValueError):
        index.max_below(np.full(index.num_items, np.nan))


def test_propensity_mix_inside_beam_search_ranks_by_p_times_one_plus_beta_w(tiny):
    """decode.propensity_mix: the exact top-k of p(item) * (1 + beta * w(item)), w the clipped inverse
    propensity of the debiased metric, whatever the number of steps per item."""
    from genrec.causal.priors import CausalPriors

    setup, model = tiny
    beta = 0.5
    prior = CausalPriors(model, setup).node_prior(replace(DecodeOptions.from_config(setup.cfg), propensity_mix=beta))
    w = propensity_weights(setup.split.train_popularity(), setup.cfg.eval.ips_clip)
    assert len(set(w.round(6))) > 2  # the toy catalog's popularity varies, so the bonus does too
    changed = False
    for user in setup.split.eval_users[:6]:
        prompt = setup.encoder.prompt_ids(setup.split.example(user, "test", 5))
        seen = setup.split.seen(user, "test")
        got = constrained_topk(model, [prompt], setup.index, k=10, num_beams=setup.index.num_items, excluded=[seen],
                               pad_id=setup.tokenizer.pad_token_id, node_prior=prior)[0]
        p = score_items(model, prompt, setup.index).double().exp().numpy()
        ref = torch.tensor(np.log(p * (1 + beta * w)) - np.log1p(beta * w).max())
        ref[list(seen)] = float("-inf")
        top = torch.topk(ref, 10)
        assert [i for i, _ in got] == top.indices.tolist()
        assert [s for _, s in got] == pytest.approx(top.values.tolist(), abs=1e-4)
        plain = torch.tensor(np.log(p))
        plain[list(seen)] = float("-inf")
        changed |= torch.topk(plain, 10).indices.tolist() != top.indices.tolist()
    assert changed  # the bonus reorders at least one user's top 10


def test_fit_temperature_recovers_the_temperature_the_targets_were_drawn_at():
    """Targets drawn from softmax(z); the scorer reports 2.5 z (over-confident): the fitted T is ~2.5, and it
    beats the NLL of its neighbours."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6000, 40, generator=gen) * 1.5
    targets = torch.multinomial(z.softmax(1), 1, generator=gen).squeeze(1)
    scores = 2.5 * z
    fit = fit_temperature(scores, targets.tolist())
    t = fit.temperature
    assert t == pytest.approx(2.5, rel=0.06)
    masked = masked_scores(scores, None)
    at = target_nll(masked, targets, t)
    assert fit.nll == pytest.approx(at) and fit.nll_at_one == pytest.approx(target_nll(masked, targets, 1.0))
    assert fit.cases == 6000
    assert at < fit.nll_at_one and at < target_nll(masked, targets, t * 1.3) and at < target_nll(masked, targets, t / 1.3)


def test_fit_temperature_fits_over_the_items_a_case_may_be_recommended():
    """An excluded item (a seen one) with a huge score is left out of every softmax, so the fit equals the fit
    without its column; a case whose target is excluded is skipped."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3000, 20, generator=gen)
    targets = torch.multinomial(z.softmax(1), 1, generator=gen).squeeze(1).tolist()
    without = fit_temperature(0.5 * z, targets).temperature
    scores = torch.cat([0.5 * z, torch.full((3000, 1), 30.0)], dim=1)  # item 20: seen by everyone
    excluded = [{20}] * 3000
    assert fit_temperature(scores, targets, excluded).temperature == pytest.approx(without, rel=2e-3)
    assert fit_temperature(scores, targets).temperature > 5 * without  # counted, it drags T up to flatten it away
    lost = torch.cat([scores, torch.randn(1, 21, generator=gen)])
    skipped = fit_temperature(lost, targets + [3], excluded + [{3, 20}])
    assert skipped.temperature == pytest.approx(without, rel=2e-3) and skipped.cases == 3000
    with pytest.raises(ValueError, match="every case's target is excluded"):
        fit_temperature(scores[:1], [2], [{2}])


# ---- metrics -----------------------------------------------------------------------------------------------

def test_propensity_weights_are_inverse_smoothed_counts_clipped():
    w = propensity_weights(np.array([99, 49, 0]), clip=50)
    assert w.tolist() == pytest.approx([1.0, 2.0, 50.0])  # rho = [1, .5, .01 -> floored at 1/50]


def test_bias_metrics_hand_computed():
    popularity = np.array([9, 4, 1, 0, 0])  # propensity weights [1, 2, 5, 10, 10] with clip 100
    rankings = [[0, 1], [2, 0], [0, 1], [1, 0], [0, 2]]
    targets = [0, 0, 3, 1, 2]  # ranks 1, 2, miss, 1, 2
    m = bias_metrics(rankings, targets, popularity, k=10, clip=100, seed=0)
    ndcg = np.array([1, 1 / math.log2(3), 0, 1, 1 / math.log2(3)])
    w = np.array([1, 1, 10, 2, 5])
    assert m["snips_ndcg@10"] == pytest.approx((w * ndcg).sum() / w.sum())
    assert m["snips_hit@10"] == pytest.approx((1 + 1 + 2 + 5) / 19)
    assert m["snips_ess"] == pytest.approx(19 ** 2 / (1 + 1 + 100 + 4 + 25))  # (sum w)^2 / sum w^2
    train_mean = (9 * 1 + 4 * 2 + 1 * 5) / 14
    assert m["ips_hit@10"] == pytest.approx((1 + 1 + 2 + 5) / 5 / train_mean)
    # quintiles of 5 users by target popularity (0 < 1 < 4 < 9 = 9): users 2, 4, 3, 0, 1
    assert [m[f"hit@10_pop_q{q}"] for q in range(1, 6)] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert m["arp@10"] == pytest.approx(np.mean([6.5, 5, 6.5, 6.5, 5]))
    # head = the top 20% of 5 items = item 0; every list holds item 0 and one tail item -> 5 of 10 slots
    assert head_items(popularity).tolist() == [True, False, False, False, False]
    assert m["tail_share@10"] == pytest.approx(0.5)
    assert 0 <= m["intervened_ndcg@10"] <= 1


def test_snips_equals_the_plain_metric_when_popularity_is_flat():
    rng = np.random.default_rng(3)
    rankings = [rng.permutation(20)[:10].tolist() for _ in range(50)]
    targets = rng.integers(0, 20, 50).tolist()
    m = bias_metrics(rankings, targets, np.full(20, 7), k=10)
    hits = np.mean([t in r for r, t in zip(rankings, targets)])
    assert m["snips_hit@10"] == pytest.approx(hits)
    assert m["ips_hit@10"] == pytest.approx(hits)
    assert m["tail_share@10"] == pytest.approx(np.mean([np.mean([i >= 4 for i in r]) for r in rankings]))


def test_intervened_test_favours_users_with_rare_targets():
    popularity = np.array([1000, 0])
    rankings = [[1]] * 200  # everyone is recommended the rare item
    targets = [0] * 100 + [1] * 100  # every popular-target user is missed, every rare-target user hit
    m = bias_metrics(rankings, targets, popularity, clip=1000, seed=1)
    assert m["hit@10_pop_q1"] == 1.0 and m["hit@10_pop_q5"] == 0.0
    assert m["intervened_hit@10"] > 0.98  # the rare target's weight is 1000x the popular one's
    assert m["snips_hit@10"] == pytest.approx(1000 / 1001)


def test_paired_bootstrap_interval_of_relative_change():
    rng = np.random.default_rng(5)
    popularity = rng.integers(0, 50, 30)
    targets = rng.integers(0, 30, 400).tolist()
    reference = [rng.permutation(30)[:10].tolist() for _ in targets]
    same = paired_relative_ci([reference], [reference], targets, popularity, resamples=200)
    assert same == {"ndcg@10": [0.0, 0.0], "snips_ndcg@10": [0.0, 0.0]}  # no difference, no spread
    # the target moved to the top for every user the reference ranked it in the top 10: NDCG only rises
    better = [[t] + [i for i in r if i != t][:9] if t in r else r for r, t in zip(reference, targets)]
    ci = paired_relative_ci([better], [reference], targets, popularity, resamples=200)
    point = np.mean([1.0 if t in r else 0.0 for r, t in zip(reference, targets)]) / np.mean(
        [1 / math.log2(r.index(t) + 2) if t in r else 0.0 for r, t in zip(reference, targets)]) - 1
    assert 0 < ci["ndcg@10"][0] < point < ci["ndcg@10"][1]
    assert ci["snips_ndcg@10"][0] > 0
    # two runs: each user's NDCG is averaged first, so (better, reference) against the reference is half the gain
    half = paired_relative_ci([better, reference], [reference], targets, popularity, resamples=200)
    assert half["ndcg@10"] == pytest.approx([v / 2 for v in ci["ndcg@10"]], abs=1e-3)


def test_paired_bootstrap_from_per_user_ndcg_matches_the_rankings_it_came_from():
    """A compact record keeps per-user NDCG, not rankings: pooling from it draws the same interval."""
    rng = np.random.default_rng(6)
    popularity = rng.integers(0, 50, 30)
    targets = rng.integers(0, 30, 300).tolist()
    runs = [[rng.permutation(30)[:10].tolist() for _ in targets] for _ in range(2)]
    reference = [[rng.permutation(30)[:10].tolist() for _ in targets] for _ in range(2)]
    from_rankings = paired_relative_ci(runs, reference, targets, popularity, resamples=300, seed=3)
    per_user = [per_user_ndcg(r, targets) for r in runs]
    assert per_user[0][0] == (1 / math.log2(runs[0][0].index(targets[0]) + 2) if targets[0] in runs[0][0] else 0)
    from_ndcg = paired_relative_ci_per_user(per_user, [per_user_ndcg(r, targets) for r in reference], targets,
                                            popularity, resamples=300, seed=3)
    assert from_ndcg == from_rankings and from_ndcg["ndcg@10"][0] < from_ndcg["ndcg@10"][1]
    with pytest.raises(ValueError, match="one value per target"):
        paired_relative_ci_per_user([per_user[0][:-1]], per_user, targets, popularity)


# ---- config and end to end ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("train.weight_clip=0.5", "train.weight_clip"),
    ("train.weight_power=-1", "train.weight_power"),
    ("eval.ips_clip=0", "eval.ips_clip"),
    ("train.target_weighting=inverse", "inverse_popularity"),
    ("train.popularity_prior=-1", "train.popularity_prior"),
    ("decode.propensity_mix=-0.1", "decode.propensity_mix"),
    ("decode.propensity_temperature=0", "decode.propensity_temperature"),
    ("train.popularity_prior=1", "items.identifier=atomic"),  # the default identifier is titles
])
def test_bad_causal_settings_are_named(toy_data_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy", override])


def test_deconfounded_run_and_adjusted_evaluation(tiny_overrides):
    overrides = tiny_overrides + ["train.epochs=1", "train.target_weighting=inverse_popularity", "train.weight_clip=5"]
    load_recipe("finetune").main(overrides)
    plain = load_recipe("evaluate").main(overrides)
    adjusted = load_recipe("evaluate").main(overrides + ["decode.popularity_gamma=2.0"])
    assert adjusted["protocol"]["decoding"]["popularity_gamma"] == 2.0
    for results in (plain, adjusted):
        m = results["metrics"]
        assert {"snips_ndcg@10", "ips_ndcg@10", "intervened_ndcg@10", "arp@10", "tail_share@10",
                "hit@10_pop_q1", "hit@10_pop_q5"} <= set(m)
        assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0
        assert "snips_ndcg@10" in results["baselines"]["popularity"]
    # a strong popularity prior pushes the recommendations towards popular items
    assert adjusted["metrics"]["arp@10"] > plain["metrics"]["arp@10"]
    run = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run.output_dir=")))
    assert json.loads((run / "eval_results.json").read_text())["protocol"]["decoding"]["popularity_gamma"] == 2.0
    # the calibrated mix: its temperature is recorded, and a hotter T weighs the long tail in harder
    mixed = load_recipe("evaluate").main(overrides + ["decode.propensity_mix=0.5"])
    tempered = load_recipe("evaluate").main(overrides + ["decode.propensity_mix=0.5", "decode.propensity_temperature=4"])
    assert "propensity_temperature" not in plain["protocol"]["decoding"]
    assert mixed["protocol"]["decoding"]["propensity_temperature"] == 1.0
    assert tempered["protocol"]["decoding"]["propensity_temperature"] == 4.0
    assert tempered["metrics"]["arp@10"] < mixed["metrics"]["arp@10"] < plain["metrics"]["arp@10"]


def test_causal_benchmark_trains_both_recipes_and_picks_gamma_on_validation(tiny_overrides, tmp_path):
    import os
    import subprocess
    import sys

    # the shipped recipes, on the tiny model and toy data
    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "prompt.template="))]
    overrides += ["train.weight_clip=5", "reason.max_new_tokens=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "causal.py"), "--epochs", "1", "--out", str(tmp_path / "c"),
           "--gammas", "0", "1", "3", "--penalties", "-1", "--mixes", "0.5", "--lambdas", "0.5", "--set", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for label in ("sft", "deconfounded", "deconfounded_pd", "deconfounded_prior", "deconfounded_prior_pd",
                  "counterfactual", "sft_penalty", "sft_mix", "popularity"):
        assert 0 <= result[label]["debiased_ndcg@10"] <= 1
        assert result[label]["debiased_ndcg@10"] == result[label]["snips_ndcg@10"]
    grid = result["valid_grid"]
    assert set(grid["deconfounded"]) == {"gamma=0", "gamma=1", "gamma=3"}
    assert set(grid["deconfounded_prior"]) == {"gamma=0", "gamma=1", "gamma=3"}
    assert set(grid["sft"]) == {"gamma=0", "gamma=-1", "beta=0.5"}
    assert set(grid["counterfactual"]) == {"lambda=0", "lambda=0.5"}
    assert result["chosen"]["sft_mix"] == {"beta": 0.5} and result["chosen"]["sft_penalty"] == {"gamma": -1.0}
    # the chosen setting follows the rule on the validation grid
    reference = grid["sft"]["gamma=0"]["ndcg@10"]
    allowed = {g: m for g, m in grid["deconfounded"].items() if m["ndcg@10"] >= 0.95 * reference}
    chosen = f"gamma={result['chosen']['deconfounded']['gamma']:g}"
    if allowed:
        assert grid["deconfounded"][chosen]["debiased_ndcg@10"] == max(m["debiased_ndcg@10"] for m in allowed.values())
    assert result["relative"]["deconfounded"]["ndcg@10"] == pytest.approx(
        result["deconfounded"]["ndcg@10"] / result["sft"]["ndcg@10"] - 1, abs=2e-3)
    # every relative figure has a paired bootstrap interval; a row decoded like SFT would sit at 0
    for label, ci in result["relative_ci95"].items():
        assert ci["ndcg@10"][0] <= ci["ndcg@10"][1] and ci["snips_ndcg@10"][0] <= ci["snips_ndcg@10"][1]
    assert set(result["relative_ci95"]) == set(result["relative"])
    assert result["deconfounded_pd"]["gamma"] == 0.0 and "lambda" in result["counterfactual"]
    assert result["deconfounded_prior_pd"]["gamma"] == 0.0 and "gamma" in result["chosen"]["deconfounded_prior"]
    # own history vs another user's: reported for the rows that claim to use the history
    for label in ("sft", "counterfactual"):
        assert -1 <= result[label]["history_reliance_gap"] <= 1
    assert result["train_minutes"]["sft"][0] > 0 and result["users"] == 24 and result["seeds"] == [42]
    # reason, then recommend: the item-only ablation has no rationale; the swap keeps the items' validity
    assert "rationale_exact" not in result["reason_item_only"]
    for label in ("reason", "reason_swapped"):
        assert 0 <= result[label]["rationale_genre_match@10"] <= 1
    assert result["reason"]["swap_drop_ndcg@10"] == pytest.approx(
        result["reason"]["ndcg@10"] - result["reason_swapped"]["ndcg@10"], abs=2e-4)
    trained_with = {name: yaml.safe_load((tmp_path / "c" / "seed-42" / name / "config.yaml").read_text())["train"]
                    for name in ("sft", "deconfounded", "deconfounded_prior", "counterfactual", "reason",
                                 "reason_item_only")}
    assert trained_with["sft"]["target_weighting"] == trained_with["counterfactual"]["target_weighting"] == "none"
    assert trained_with["deconfounded"]["target_weighting"] == "inverse_popularity"
    assert trained_with["deconfounded_prior"]["popularity_prior"] == 1.0
    assert trained_with["deconfounded_prior"]["target_weighting"] == trained_with["sft"]["target_weighting"]
    assert trained_with["sft"]["popularity_prior"] == trained_with["deconfounded"]["popularity_prior"] == 0
    # same seed, data order and starting weights: the first step's loss differs only by the popularity term
    runs = tmp_path / "c" / "seed-42"
    first = {name: next(json.loads(x)["loss"] for x in (runs / name / "metrics.jsonl").read_text().splitlines()
                        if "loss" in json.loads(x)) for name in ("sft", "deconfounded_prior")}
    assert first["deconfounded_prior"] != pytest.approx(first["sft"], rel=1e-3)
    assert trained_with["sft"]["counterfactual_alpha"] == 0 and trained_with["counterfactual"]["counterfactual_alpha"] > 0
    assert {trained_with[n]["epochs"] for n in ("sft", "deconfounded", "deconfounded_prior", "counterfactual")} == {1.0}
    assert trained_with["reason"]["epochs"] == trained_with["reason_item_only"]["epochs"] == 2.0  # their config's


def test_causal_benchmark_averages_seeds_and_chooses_on_their_mean(tiny_overrides, tmp_path):
    import os
    import subprocess
    import sys

    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "prompt.template="))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "causal.py"), "--systems", "sft", "--seeds", "1", "2",
           "--epochs", "1", "--out", str(tmp_path / "c"), "--penalties", "-1", "--mixes", "0.5", "--set", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["seeds"] == [1, 2] and len(result["train_minutes"]["sft"]) == 2
    seeds = {seed: yaml.safe_load((tmp_path / "c" / f"seed-{seed}" / "sft" / "config.yaml").read_text())["run"]["seed"]
             for seed in (1, 2)}
    assert seeds == {1: 1, 2: 2}  # one run per seed, each in its own folder
    for label in ("sft", "sft_penalty", "sft_mix"):
        per_seed = result[label]["per_seed"]
        assert len(per_seed["ndcg@10"]) == 2
        assert result[label]["ndcg@10"] == pytest.approx(np.mean(per_seed["ndcg@10"]), abs=1e-4)
        assert result[label]["debiased_ndcg@10"] == pytest.approx(np.mean(per_seed["debiased_ndcg@10"]), abs=1e-4)
    assert set(result["relative_ci95"]) == {"sft_penalty", "sft_mix"}


# ---- counterfactual fine-tuning and contrastive decoding ---------------------------------------------------

def _title_rows(setup, n=4):
    from genrec.data import training_examples

    examples = training_examples(setup.split, setup.cfg.data, "target")[:n]
    return [{**setup.encoder.encode(ex), "user_id": ex.user_id} for ex in examples]


def test_cft_loss_equals_sft_loss_at_alpha_zero_and_adds_the_counterfactual_term(tiny):
    from genrec.causal.counterfactual import CounterfactualLoss, NullHistory

    setup, model = tiny
    rows = _title_rows(setup)
    pad = setup.tokenizer.pad_token_id

    def terms(alpha):
        return [CrossEntropy(), CounterfactualLoss(alpha, NullHistory(setup.encoder, "target"))]

    batch = training_batch(rows, pad, terms(0.0))  # the counterfactual term collates the null-history twin
    null = NullHistory(setup.encoder, "target").batch(rows, pad)
    assert all(torch.equal(batch["null_history"][k], null[k]) for k in null)
    with torch.no_grad():
        sft = completion_loss(model, batch).item()
        assert completion_loss(model, batch, terms=terms(0.0)).item() == sft
        cft = completion_loss(model, batch, terms=terms(0.7)).item()
        # by hand: full logits of each row and of its null twin, at the completion positions
        with_h, without, targets = [], [], []
        null_prompt = setup.encoder.prompt_ids(Example("", (), None))
        for r in rows:
            start = next(p for p, t in enumerate(r["labels"]) if t != IGNORE_INDEX)
            completion = r["input_ids"][start:]
            h = model(input_ids=torch.tensor([r["input_ids"]])).logits[0, start - 1: -1]
            n = model(input_ids=torch.tensor([null_prompt + completion])).logits[0, len(null_prompt) - 1: -1]
            with_h.append(h)
            without.append(n)
            targets += completion
    h, n, y = torch.cat(with_h), torch.cat(without), torch.tensor(targets)
    assert sft == pytest.approx(F.cross_entropy(h, y).item(), rel=1e-5)
    assert cft == pytest.approx(F.cross_entropy(h, y).item() + 0.7 * F.cross_entropy(h - n, y).item(), rel=1e-5)


def test_cft_sequence_objective_subtracts_the_empty_history_prediction(tiny_overrides):
    from genrec.causal.counterfactual import CounterfactualLoss, NullHistory
    from genrec.data import sequence_windows

    overrides = [o for o in tiny_overrides if not o.startswith("prompt.template=")]
    setup = prepare(load_config(None, overrides + [f"prompt.template={REPO / 'prompts' / 'next_item_atomic.yaml'}",
                                                   "prompt.chat=off", "items.identifier=atomic",
                                                   "train.objective=sequence"]))
    torch.manual_seed(0)
    model = setup.load_model().eval()
    rows = [{**setup.encoder.encode(ex), "user_id": ex.user_id} for ex in sequence_windows(setup.split, 5, 2)[:3]]
    pad = setup.tokenizer.pad_token_id
    batch, null = collate(rows, pad), NullHistory(setup.encoder, "sequence").batch(rows, pad)
    assert null["input_ids"].shape[0] == 1
    candidates = torch.tensor(sorted(setup.item_tokens))
    with torch.no_grad():
        terms = [CrossEntropy(), CounterfactualLoss(0.5, NullHistory(setup.encoder, "sequence"))]
        cft = completion_loss(model, {**batch, "null_history": null}, candidates, terms=terms).item()
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"]).logits
        prompt = setup.encoder.prompt_ids(Example("", (), None))
        prior = model(input_ids=torch.tensor([prompt])).logits[0, -1, candidates]
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    h = full[:, :-1][keep][:, candidates]
    y = torch.searchsorted(candidates, batch["labels"][:, 1:][keep])
    assert cft == pytest.approx(F.cross_entropy(h, y).item() + 0.5 * F.cross_entropy(h - prior, y).item(), rel=1e-4)


def test_contrastive_decoding_equals_exhaustive_contrast(tiny):
    from genrec.causal.counterfactual import null_node_prior

    setup, model = tiny
    null_prompt = setup.encoder.prompt_ids(Example("", (), None))
    prior = null_node_prior(model, setup.index, null_prompt)
    null_scores = score_items(model, null_prompt, setup.index)
    leaves = setup.index.item_path.gather(1, (setup.index.item_length - 1).unsqueeze(1)).squeeze(1)
    assert prior[leaves].tolist() == pytest.approx(null_scores.tolist(), abs=1e-4)
    lam = 0.6
    for user in setup.split.eval_users[:3]:
        prompt = setup.encoder.prompt_ids(setup.split.example(user, "test", 5))
        got = constrained_topk(model, [prompt], setup.index, k=10, num_beams=setup.index.num_items,
                               pad_id=setup.tokenizer.pad_token_id, node_prior=-lam * prior)[0]
        top = torch.topk(score_items(model, prompt, setup.index) - lam * null_scores, 10)
        assert [i for i, _ in got] == top.indices.tolist()
        assert [s for _, s in got] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_counterfactual_run_and_contrastive_evaluation(tiny_overrides):
    overrides = tiny_overrides + ["train.epochs=1", "train.counterfactual_alpha=0.5"]
    load_recipe("finetune").main(overrides)
    run = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run.output_dir=")))
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses and all(math.isfinite(v) for v in losses)
    results = load_recipe("evaluate").main(overrides + ["decode.contrastive_lambda=0.5"])
    assert results["protocol"]["decoding"]["contrastive_lambda"] == 0.5
    assert results["metrics"]["valid_item_rate"] == 1.0 and results["metrics"]["duplicate_rate"] == 0.0
