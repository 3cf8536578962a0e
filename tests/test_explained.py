"""Explaining a recommender's own ranking (genrec.explain.top_k): the headline atomic recipe, whose template writes
no explanation, explains its top-K with true statements only; faithful selection cites what the recommending
model relies on; the wording is the likeliest line; one packed forward scores every item's lines exactly."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_recipes import load_recipe
from test_atomic import atomic

from genrec.config import load_config
from genrec.errors import ConfigError


@pytest.fixture(scope="module")
def headline(tiny_model_dir, toy_data_dir, tmp_path_factory):
    """A tiny run of the atomic recipe (its template has no explanation line) and its recommender."""
    from genrec.recommender import Recommender

    run = tmp_path_factory.mktemp("headline") / "run"
    overrides = atomic([f"run.output_dir={run}", f"data.path={toy_data_dir}", "data.dataset=toy",
                        "data.max_history=5", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                        "train.batch_size=4", "train.eval_users=4", "decode.batch_users=4", "train.max_steps=4",
                        "train.lr=3e-3", "train.log_every=2", "explain.cowatch_min=1"])
    load_recipe("finetune").main(overrides)
    recommender, _ = Recommender.load(load_config(None, overrides))
    return overrides, recommender


def cases(recommender, n: int = 5):
    split = recommender.setup.split
    users = split.eval_users[:n]
    examples = [split.example(u, "test", recommender.setup.cfg.data.max_history) for u in users]
    ranked = recommender.rank(examples, [split.seen(u, "test") for u in users], 5).items
    return examples, ranked


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_one_packed_forward_scores_every_line_as_its_own_continuation(tiny_model_dir, implementation):
    from transformers import AutoModelForCausalLM

    from genrec.decoding.search import score_branches, score_continuations

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32,
                                                 attn_implementation=implementation).eval()
    prompt = [5, 9, 13, 40, 7, 22]
    branches = [([11, 12], [[30, 31, 32], [33], [34, 35]]), ([], [[36, 37]]), ([50], [[51, 52, 53, 54]]), ([60], [])]
    for penalty in (0.0, 1.0):
        got = score_branches(model, prompt, branches, length_penalty=penalty)
        want = [score_continuations(model, prompt, [h + line for line in lines], penalty,
                                    skip=[len(h)] * len(lines)).tolist() if lines else []
                for h, lines in branches]
        for g, w in zip(got, want):
            assert g == pytest.approx(w, abs=1e-4)
    # the head is context: the same line after another head scores differently
    a, b = score_branches(model, prompt, [([11], [[30, 31]]), ([12], [[30, 31]])])
    assert a[0] != pytest.approx(b[0], abs=1e-6)


def test_the_headline_model_explains_its_own_ranking_with_true_statements(headline):
    from genrec.explain.top_k import RankingExplainer

    _, recommender = headline
    setup = recommender.setup
    assert not setup.template.has_explanation  # the atomic recipe: the line comes from explain.template
    explainer = RankingExplainer(recommender)
    examples, ranked = cases(recommender)
    explained_any = 0
    for example, top in zip(examples, ranked):
        out = explainer(example, top)
        assert [(e.item, e.score) for e in out] == top  # the ranking, unchanged
        for e in out:
            evidence = setup.explainer.evidence.build(example.user_id, example.history, e.item)
            truths = {c.text for c in setup.explainer.candidates(evidence)}
            if e.explanation:
                explained_any += 1
                assert e.explanation in truths  # a true statement about this pair
                assert e.claims and e.claims_true == len(e.claims)  # and its claims check out
                assert set(e.cited) <= set(example.history)
            else:
                assert not truths
    assert explained_any >= 10


def with_candidates(recommender, n: int):
    """(example, its ranked items, each item's candidate statements, the history sets they cite) of n users."""
    examples, ranked = cases(recommender, n)
    explainer = recommender.setup.explainer
    for example, top in zip(examples, ranked):
        items = [i for i, _ in top]
        candidates = [explainer.candidates(explainer.evidence.build(example.user_id, example.history, i))
                      for i in items]
        yield example, items, candidates, list(dict.fromkeys(
            frozenset(c.cited) for cands in candidates for c in cands if c.cited))


def test_faithful_selection_cites_the_set_whose_removal_lowers_the_item_most(headline, monkeypatch):
    from genrec.explain.top_k import RankingExplainer

    _, recommender = headline
    explainer = RankingExplainer(recommender)
    checked = 0
    for example, items, candidates, sets in with_candidates(recommender, 8):
        if len(sets) < 2:
            continue
        favourite = sets[-1]  # make removing this set hurt every item the most, and removing any other set help

        def fake(user_id, histories, wanted, favourite=favourite, full=example.history):
            rows = []
            for h in histories:
                removed = frozenset(full) - frozenset(h)
                rows.append([0.0 if h == full else (-5.0 if removed == favourite else 1.0)] * len(wanted))
            return torch.tensor(rows)

        monkeypatch.setattr(explainer, "_item_scores", fake)
        kept = [mine[0] for mine in explainer._faithful_tiers(example, items, candidates)]  # the best set's lines
        for cands, mine in zip(candidates, kept):
            if any(frozenset(c.cited) == favourite for c in cands):
                assert mine and all(frozenset(c.cited) == favourite for c in mine)
                checked += 1
            elif any(c.cited for c in cands):
                assert mine == cands  # no cited set of this item lowers it: every candidate stays
        monkeypatch.undo()
    assert checked > 0


def test_the_chosen_line_is_the_likeliest_under_the_explanation_template(headline):
    from dataclasses import replace

    from genrec.decoding.search import score_continuations
    from genrec.explain.top_k import RankingExplainer, statement

    _, recommender = headline
    setup = recommender.setup
    explainer = RankingExplainer(recommender)
    examples, ranked = cases(recommender, 3)
    for example, top in zip(examples, ranked):
        items = [i for i, _ in top]
        candidates = [setup.explainer.candidates(setup.explainer.evidence.build(example.user_id, example.history, i), 1)
                      for i in items]
        chosen = explainer._likeliest(example, items, candidates)
        prompt = explainer.encoder.prompt_ids(replace(example, history=example.history[-setup.cfg.explain.prompt_history:]))
        used = set()  # the statements of the lines chosen so far
        for item, cands, pick in zip(items, candidates, chosen):
            if not cands:
                assert pick is None
                continue
            head = explainer._item_ids(item, example.user_id)
            lines = [explainer.encoder.rationale_ids(explainer.template.render_explanation(
                replace(example, target=item), setup.split.catalog, "title", c.text)) for c in cands]
            scores = score_continuations(recommender.model, prompt, [head + line for line in lines],
                                         setup.cfg.explain.length_penalty, skip=[len(head)] * len(lines))
            fresh = [i for i in range(len(cands)) if statement(cands[i]) not in used]
            # the likeliest line whose claim no higher-ranked item makes; the likeliest of all when every one is
            best = max(fresh, key=lambda i: float(scores[i])) if fresh else int(scores.argmax())
            assert pick.text == cands[best].text
            used.add(statement(pick))


def test_a_list_repeats_a_line_only_when_an_item_has_no_other():
    from genrec.explain.statements import Explanation
    from genrec.explain.top_k import distinct_picks

    a, b, c = (Explanation("family", text, None) for text in ("A", "B", "C"))
    picks = distinct_picks([[a, b], [a, b], [a, c], [a], []],
                           [[0.0, -1.0], [0.0, -1.0], [0.0, -5.0], [0.0], []])
    assert [p.text if p else None for p in picks] == ["A", "B", "C", "A", None]


def test_a_claim_is_not_repeated_in_other_words_and_the_next_evidence_stands_in():
    from genrec.explain.statements import Explanation
    from genrec.explain.top_k import distinct_picks

    # two wordings of one genre count (same family, same counted items) and two single-title statements
    count_1, count_2 = (Explanation("genre", text, "Action", (1, 2, 3)) for text in ("3 were Action.", "Action again."))
    anchor_4, anchor_5 = (Explanation("anchor", f"Because you loved {i}.", None, (i,)) for i in (4, 5))
    picks = distinct_picks(
        [[count_1], [count_2], [count_1], [count_2]],
        [[0.0], [0.0], [0.0], [0.0]],
        fallbacks=[[], [[anchor_4]], [[anchor_4], [anchor_5]], []],  # the last item has nothing else to say
        fallback_scores=[[], [[-1.0]], [[-1.0], [-2.0]], []])
    assert [p.text for p in picks] == ["3 were Action.", "Because you loved 4.", "Because you loved 5.", "Action again."]


def test_fallbacks_are_scored_only_for_items_whose_best_evidence_a_higher_item_has(headline, monkeypatch):
    from genrec.explain.statements import Explanation
    from genrec.explain.top_k import RankingExplainer

    _, recommender = headline
    explainer = RankingExplainer(recommender)
    shared = Explanation("genre", "shared", "Action", (1, 2))
    own = [Explanation("anchor", f"own {i}", None, (i,)) for i in range(3)]
    tiers = [[[shared], [own[0]]], [[shared], [own[1]], [own[2]], [own[0]]], [[own[2]], [own[1]]]]
    fallbacks = explainer._fallbacks(tiers, depth=2)
    # item 2 may repeat item 1's best claim: its next two groups are scored; item 1 and 3 lead with their own
    assert fallbacks == [[], [[own[1]], [own[2]]], []]


def test_faithful_tiers_order_the_cited_sets_by_how_much_their_removal_lowers_the_item(headline, monkeypatch):
    from genrec.explain.top_k import RankingExplainer

    _, recommender = headline
    explainer = RankingExplainer(recommender)
    checked = 0
    for example, items, candidates, sets in with_candidates(recommender, 8):
        if len(sets) < 3:
            continue
        drop = {s: float(n) for n, s in enumerate(sets)}  # removing set n lowers every item by n (set 0: not at all)

        def fake(user_id, histories, wanted, full=example.history):
            return torch.tensor([[0.0 if h == full else -drop[frozenset(full) - frozenset(h)]] * len(wanted)
                                 for h in histories])

        monkeypatch.setattr(explainer, "_item_scores", fake)
        for cands, mine in zip(candidates, explainer._faithful_tiers(example, items, candidates)):
            cited = [s for s in dict.fromkeys(frozenset(c.cited) for c in cands if c.cited) if drop[s] > 0]
            if not cited:
                assert mine == [cands]
                continue
            assert [frozenset(group[0].cited) for group in mine] == sorted(cited, key=lambda s: -drop[s])
            assert all(len({frozenset(c.cited) for c in group}) == 1 for group in mine)
            checked += 1
        monkeypatch.undo()
    assert checked > 0


def test_recommend_explains_the_atomic_recipes_top_k(headline, tmp_path):
    overrides, recommender = headline
    adapter = load_config(None, overrides).run.output_dir + "/adapter"
    rows = load_recipe("recommend").main([*overrides, f"run.checkpoint={adapter}", f"run.output_dir={tmp_path}",
                                          "recommend.user_id=3",
                                          "recommend.k=5", "explain=true"])
    assert len(rows) == 5 and len({r["item_id"] for r in rows}) == 5
    assert all(r["claims_true"] == r["claims"] for r in rows) and sum(bool(r["explanation"]) for r in rows) >= 3
    written = [json.loads(x) for x in (tmp_path / "recommendations.jsonl").read_text().splitlines()]
    assert [r["explanation"] for r in written] == [r["explanation"] for r in rows]


def test_an_explanation_template_without_a_line_is_refused_before_weights_load(tiny_overrides, capfd):
    with pytest.raises(ConfigError, match="has no 'explanation' key"):
        load_recipe("recommend").main([*tiny_overrides, "run.checkpoint=base", "recommend.user_id=3", "explain=true",
                                       "explain.template=prompts/next_item_title.yaml"])
    assert "Loading weights" not in capfd.readouterr().err


def test_item_log_probs_are_the_ranking_scores_of_one_token_items(headline):
    """Recommender.item_log_probs (faithful selection's scores, one forward for every item) gives the numbers
    the ranking scored the items with."""
    _, recommender = headline
    setup = recommender.setup
    examples, ranked = cases(recommender, 3)
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    scores = recommender.item_log_probs(prompts)
    assert scores.shape == (3, len(setup.split.catalog))
    for row, top in zip(scores, ranked):
        assert [s for _, s in top] == pytest.approx([row[i].item() for i, _ in top], abs=1e-4)


def test_the_explain_benchmark_scores_the_headline_models_own_top10(headline, tmp_path):
    """benchmarks/explain.py --headline: the same ranking as recipes/evaluate.py, every top-10 item explained
    with true statements only, and the latency keys."""
    import importlib.util
    from argparse import Namespace

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("explain_benchmark", REPO / "benchmarks" / "explain.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    overrides, recommender = headline
    adapter = load_config(None, overrides).run.output_dir + "/adapter"
    config_overrides = [o for o in overrides if not o.startswith("run.output_dir=")]
    result = bench.explain_headline(Namespace(config=None, adapter=adapter, users=4, seed=42,
                                              out=str(tmp_path), retrain=False, set=config_overrides))
    assert result["ndcg@10"] == result["headline_ndcg@10"] and result["ranking_users"] == 24  # fp32: same ranking
    assert result["explained_items"] == 40 and result["explained_share"] > 0.5
    assert result["item_grounding_precision"] == 1.0 and result["history_grounding_precision"] == 1.0
    assert result["hallucinated_title_rate"] == 0.0 and 0.0 <= result["usr"] <= 1.0
    assert 1 <= result["distinct_top1"] <= 24
    latency = result["latency_s"]
    assert latency["users"] == 4 and latency["top10_users"] == 24
    assert 0 < latency["top10_p50"] <= latency["explained_top10_p50"]
    records = [json.loads(x) for x in (tmp_path / "explanations.jsonl").read_text().splitlines()]
    assert len(records) == 40 and all(r["claims_true"] == r["claims"] for r in records)


def test_the_explain_benchmark_compares_fallback_settings_on_the_same_users(headline):
    """benchmarks/explain.py --headline --compare-fallback-sets: one row per value, every one over the same users;
    with no stand-in allowed a list repeats at least as many lines as with one."""
    import importlib.util
    from argparse import Namespace

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("explain_benchmark", REPO / "benchmarks" / "explain.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    overrides, _ = headline
    adapter = load_config(None, overrides).run.output_dir + "/adapter"
    config_overrides = [o for o in overrides if not o.startswith("run.output_dir=")]
    result = bench.compare_fallback_sets(Namespace(config=None, adapter=adapter, users=6, seed=42,
                                                   set=config_overrides, compare_fallback_sets=[0, 2]))
    assert result["users"] == 6 and set(result["rows"]) == {"0", "2"}
    rows = result["rows"]
    assert all(0 < r["explained_top10_p50"] <= r["explained_top10_p95"] for r in rows.values())
    assert rows["0"]["usr"] <= rows["2"]["usr"]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_histories_sharing_a_prefix_score_items_as_separate_prompts(headline, implementation):
    """Faithful selection reads the history and its copies with cited items removed in one packed forward
    that reads their shared beginning once; the item scores equal those of separate, padded prompts."""
    _, recommender = headline
    setup = recommender.setup
    model = recommender.model
    before = model.config._attn_implementation
    model.config._attn_implementation = implementation
    try:
        example, _ = cases(recommender, 1)
        history = example[0].history
        histories = [history, history[:-1], tuple(h for h in history if h != history[1]), history[2:], history[:1]]
        prompts = [setup.encoder.prompt_ids(example[0].__class__("u", h, None)) for h in histories]
        packed = recommender.item_log_probs(prompts, shared_prefix=True)
        separate = recommender.item_log_probs(prompts)
    finally:
        model.config._attn_implementation = before
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(packed[0], packed[1])  # the histories really differ
