"""Explained recommendations: evidence from the data, rule-chosen explanations, the claim verifier (1.0 on
oracle text, low on a shuffled control, catching each kind of false claim), the template's explanation
line, grounded and free decoding on the tiny model, counterfactual necessity, and end-to-end runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers_recipes import load_recipe

from genrec.config import ExplainConfig, load_config
from genrec.data.catalog import Catalog
from genrec.data.splits import Example, Split
from genrec.decoding.search import score_items
from genrec.errors import ConfigError, TemplateError
from genrec.explain import necessity as necessity_module
from genrec.explain.evidence import EvidenceBuilder
from genrec.explain.statements import BANKS, Explainer
from genrec.explain.verify import ExplanationVerifier, grounding_metrics
from genrec.items.index import ItemIndex
from genrec.prompts.encoding import IGNORE_INDEX
from genrec.prompts.template import PromptTemplate

REPO = Path(__file__).resolve().parents[1]
EXPLAIN = REPO / "prompts" / "recommend_then_explain.yaml"


@pytest.fixture()
def films() -> Split:
    frame = pd.DataFrame({
        "movie_title": ["Heat", "Fargo", "Alien", "Clue", "Babe", "Glory", "Speed", "Usual Suspects, The"],
        "release_year": ["1995", "1996", "1979", "1985", "1995", "1989", "1994", "1995"],
        "class": ["Action Crime", "Crime Drama", "Horror Sci-Fi", "Comedy", "Children's Comedy", "Drama War",
                  "Action Romance", "Crime Thriller"],
    }, index=[str(i) for i in range(1, 9)])
    catalog = Catalog.build(frame.index, frame, "{movie_title} ({release_year})", "item_{item_id}")
    # u: Heat Fargo Alien Clue Babe | valid Glory | test Speed ; v, w watched Heat and Speed in training
    sequences = {"u": [0, 1, 2, 3, 4, 5, 6], "v": [0, 6, 1, 2, 3], "w": [6, 0, 7, 4, 5], "x": [3, 4]}
    ratings = {"u": {0: 5.0, 1: 4.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0, 6: 4.0}}
    return Split(catalog, sequences, ratings)


def builder(split, **kw) -> EvidenceBuilder:
    return EvidenceBuilder(split, ExplainConfig(cowatch_min=1, **kw))


def test_evidence_hand_built(films):
    ev = builder(films, recent=4).build("u", (0, 1, 2, 3, 4), 6)  # Speed: Action Romance (1994)
    assert ev.item_genres == ("Action", "Romance") and ev.item_year == 1994 and ev.item_decade == "1990s"
    # last 4 items Fargo Alien Clue Babe: Comedy 2, Crime 1, Drama 1, Horror 1, Sci-Fi 1, Children's 1
    assert ev.recent == 4 and ev.affinity[0] == ("Comedy", 2)
    assert ev.feature is None and ev.feature_count == 0  # neither Action nor Romance in the last 4
    assert ev.anchors == (0,) and ev.anchor_genre == "Action"  # Heat, rated 5, shares Action
    # loved items: Heat, Fargo, Babe; co-watch with Speed among *other* users' training parts:
    # v's training part is Heat Speed Fargo, w's Speed Heat Usual Suspects -> Heat 2, Fargo 1, Babe 0
    assert ev.cowatch_anchor == 0 and ev.cowatch == 2
    assert ev.history_decade == "1990s" and ev.rating == 4.0


def test_cowatch_counts_training_parts_only(films):
    before = builder(films).cowatch(0, 6, "u")
    moved = Split(films.catalog, {**films.sequences, "v": [0, 1, 2, 3, 6]}, films.ratings)  # Speed now v's test item
    assert builder(moved).cowatch(0, 6, "u") == before - 1
    moved_eval = Split(films.catalog, {**films.sequences, "x": [3, 4, 0, 6]}, films.ratings)  # x's valid/test items
    assert builder(moved_eval).cowatch(0, 6, "u") == before


def test_oracle_and_candidates_are_true_and_shuffled_control_is_not(films):
    b = builder(films)
    explainer, verifier = Explainer(b), ExplanationVerifier(b)
    pairs = [(("u", (0, 1, 2, 3, 4)), i) for i in (5, 6, 7)] + [(("u", (0, 1, 2)), i) for i in (3, 4, 5, 6, 7)]
    refs = []
    for (user, history), item in pairs:
        ev = b.build(user, history, item)
        oracle = explainer.oracle(ev)
        assert oracle is not None and oracle.text in {c.text for c in explainer.candidates(ev)}
        refs.append(oracle.text)
        for c in explainer.candidates(ev):
            v = verifier.verify(c.text, user, history, item)
            assert v.claims and all(cl.true for cl in v.claims), (c.text, v.claims)
            assert v.hallucinated == 0
    verdicts = [verifier.verify(t, u, h, i) for t, ((u, h), i) in zip(refs, pairs)]
    assert grounding_metrics(verdicts)["item_grounding_precision"] == 1.0
    assert grounding_metrics(verdicts)["history_grounding_precision"] == 1.0
    # shuffled control: each pair gets another pair's reference (a rotation, so never its own)
    shuffled = [verifier.verify(t, u, h, i) for t, ((u, h), i) in zip(refs[1:] + refs[:1], pairs)]
    control = grounding_metrics(shuffled)
    assert control["item_grounding_precision"] < 0.6  # one user here, so its history claims may still hold
    assert sum(not all(c.true for c in v.claims) for v in shuffled) >= len(pairs) // 2


def test_verifier_on_ml100k_oracle_is_perfect_and_a_shuffled_control_is_low():
    from genrec.data import load_split

    cfg = load_config(str(REPO / "recipes/configs/ml100k/smollm2_explain.yaml"), [])
    split = load_split(cfg)
    b = EvidenceBuilder(split, cfg.explain)
    explainer, verifier = Explainer(b), ExplanationVerifier(b)
    examples = [split.example(u, "test", cfg.data.max_history) for u in split.eval_users[:150]]
    refs = [explainer.oracle(b.build(ex.user_id, ex.history, ex.target)).text for ex in examples]
    own = grounding_metrics([verifier.verify(t, ex.user_id, ex.history, ex.target) for t, ex in zip(refs, examples)])
    assert own["item_grounding_precision"] == 1.0 and own["history_grounding_precision"] == 1.0
    assert own["hallucinated_title_rate"] == 0.0
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    order = [(i + 1) % len(order) if j == i else j for i, j in enumerate(order)]  # nobody keeps their own
    shuffled = grounding_metrics([verifier.verify(refs[j], ex.user_id, ex.history, ex.target)
                                  for j, ex in zip(order, examples)])
    assert shuffled["item_grounding_precision"] < 0.5 and shuffled["history_grounding_precision"] < 0.5
    assert shuffled["hallucinated_title_rate"] > 0.5


def test_every_family_is_reachable_and_oracle_is_stable(films):
    b = builder(films, recent=5)
    explainer = Explainer(b)
    seen = set()
    for history in ((0, 1, 2, 3, 4), (0, 1), (3, 4), (2,)):
        for item in range(8):
            if item in history:
                continue
            ev = b.build("u", history, item)
            seen |= set(explainer.applicable(ev))
            assert explainer.oracle(ev) == explainer.oracle(b.build("u", history, item))
    assert seen >= {"genre", "anchor", "cowatch", "era", "different"}


def test_verifier_catches_each_kind_of_false_claim(films):
    b = builder(films)
    v = ExplanationVerifier(b)
    history, item = (0, 1, 2, 3, 4), 6  # Speed (1994), Action Romance

    def truth(text):
        return [(c.kind, c.about, c.true) for c in v.verify(text, "u", history, item).claims]

    assert truth("Because you loved Heat (1995), here is another Action movie.") == \
        [("title", "history", True), ("loved", "history", True), ("genre", "item", True)]
    assert ("genre", "item", False) in truth("Because you loved Heat (1995), here is another Comedy movie.")
    assert ("loved", "history", False) in truth("Because you loved Alien (1979), here is another Action movie.")
    hallucinated = v.verify("Since you enjoyed Glory (1989): an Action pick.", "u", history, item)
    assert hallucinated.hallucinated == 1 and not hallucinated.claims[0].true  # Glory is not in this history
    invented = v.verify("You loved Heat Wave (2001).", "u", history, item)
    assert invented.hallucinated == 1 and invented.titles == 1
    assert truth("2 of your last 5 movies were Crime.") == [("count", "history", True)]
    assert truth("3 of your last 5 movies were Crime.") == [("count", "history", False)]
    assert truth("2 of your last 9 movies were Crime.") == [("count", "history", False)]  # longer than the history
    assert truth("2 other viewers who watched Heat (1995) also watched this movie.")[1] == ("cowatch", "item", True)
    assert truth("5 other viewers who watched Heat (1995) also watched this movie.")[1] == ("cowatch", "item", False)
    assert truth("You mostly watch movies from the 1990s, and this one is from 1994.") == \
        [("decade", "history", True), ("year", "item", True)]
    assert truth("You mostly watch movies from the 1970s, and this one is from 1995.") == \
        [("decade", "history", False), ("year", "item", False)]
    # a title with a comma is one title, and the item's own title is an item claim
    assert truth("You loved Usual Suspects, The (1995).")[0] == ("title", "history", False)
    assert truth("Speed (1994) is a Romance.") == [("title", "item", True), ("genre", "item", True)]
    assert truth("Outside your usual Horror: a Comedy.") == [("genre", "history", True), ("genre", "item", False)]


def test_verifier_cites_titles_and_counted_items(films):
    v = ExplanationVerifier(builder(films))
    verdict = v.verify("Because you loved Heat (1995): 2 of your last 5 movies were Comedy.", "u", (0, 1, 2, 3, 4), 6)
    assert verdict.cited == {0, 3, 4}  # Heat; Clue and Babe are the Comedy items counted


def test_generic_baseline_claims_nothing_about_the_user(films):
    b = builder(films)
    generic = Explainer(b).generic(b.build("u", (0, 1), 6))
    claims = ExplanationVerifier(b).verify(generic.text, "u", (0, 1), 6).claims
    assert claims and {c.about for c in claims} == {"item"} and all(c.true for c in claims)
    assert generic.text in {f.format(genre="Action", a_genre="an Action", A_genre="An Action", year=1994,
                                     decade="1990s") for f in BANKS["plain"]}


def test_necessity_compares_cited_with_random_removal(films, monkeypatch):
    # a model whose score of the item is -10 without Heat in the history and 0 with it
    monkeypatch.setattr(necessity_module, "item_logprob", lambda rec, user, history, item: 0.0 if 0 in history else -10.0)
    ex = Example("u", (0, 1, 2, 3, 4), 6)
    out = necessity_module.necessity(None, [(ex, 6, {0}), (ex, 6, {2}), (ex, 6, set()), (ex, 6, {0, 1, 2})], seed=0)
    # citing Heat: removing it hurts (10) more than any random other item (0) -> win; citing Alien never
    # beats a random draw; citing nothing is untestable; 3 cited of 5 leaves too few others to draw from
    assert out["necessity_cases"] == 2 and out["necessity_untestable"] == 2
    assert out["necessity_vs_random"] == 0.5


def test_template_explanation_line_and_labels(tiny_overrides):
    from genrec.recommender import prepare

    cfg = load_config(None, [*tiny_overrides, f"prompt.template={EXPLAIN}", "items.identifier=atomic",
                             "train.objective=target", "train.item_softmax=false", "prompt.chat=off"])
    setup = prepare(cfg)
    examples = setup.training_examples()
    assert examples and all(ex.explanation for ex in examples)
    ex = examples[0]
    rendered = setup.formatter.render(ex)
    assert rendered.explanation == f" Why: {ex.explanation}"
    assert "rated" in rendered.prompt and "/5" in rendered.prompt  # history_ratings reach the prompt
    enc = setup.encoder.encode(ex)
    labelled = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE_INDEX]
    item = setup.index.sequences[ex.target]
    assert labelled == item + setup.encoder.rationale_ids(rendered.explanation)
    assert setup.template.explanation_affixes(ex, setup.split.catalog, "atomic") == (" Why: ", "")
    with pytest.raises(TemplateError, match="needs an explanation"):
        setup.formatter.render(Example(ex.user_id, ex.history, ex.target))
    with pytest.raises(ConfigError, match="train.objective=target"):
        prepare(load_config(None, [*tiny_overrides, f"prompt.template={EXPLAIN}", "items.identifier=atomic",
                                   "train.objective=sequence"])).training_examples()


def test_template_refuses_rationale_and_explanation_together(toy_data_dir):
    text = EXPLAIN.read_text() + 'rationale: " Taste: {{ rationale }}."\n'
    template = PromptTemplate("both.yaml", text)
    cfg = load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy"])
    from genrec.data import load_split
    with pytest.raises(TemplateError, match="not both"):
        template.check(load_split(cfg).catalog, "atomic")


def test_grounded_decoding_is_the_best_scored_true_statement(tiny_overrides):
    from genrec.recommender import Recommender

    cfg = load_config(None, [*tiny_overrides, f"prompt.template={EXPLAIN}", "items.identifier=atomic",
                             "prompt.chat=off", "run.checkpoint=base", "explain.cowatch_min=1", "explain.select=likeliest"])
    rec, _ = Recommender.load(cfg)
    setup = rec.setup
    users = setup.split.eval_users[:3]
    examples = [setup.split.example(u, "test", 5) for u in users]
    items = [ex.target for ex in examples]
    chosen = rec.explain(examples, items, "grounded")
    for ex, item, text in zip(examples, items, chosen):
        cands = setup.explainer.candidates(setup.explainer.evidence.build(ex.user_id, ex.history, item))
        prefix = setup.encoder.prompt_ids(ex) + setup.index.sequences[item]
        lines = [setup.encoder.rationale_ids(f" Why: {c.text}") for c in cands]
        scores = score_items(rec.model, prefix, ItemIndex(lines), length_penalty=1.0)  # mean log-prob per token
        assert text == cands[int(scores.argmax())].text
    free = rec.explain(examples, items, "free")
    assert len(free) == 3 and all(isinstance(t, str) and "\n" not in t for t in free)
    with pytest.raises(ConfigError, match="no 'explanation' key"):
        Recommender.load(load_config(None, [*tiny_overrides, "run.checkpoint=base"]))[0].explain(examples, items)


def test_shared_prompt_scoring_equals_scoring_each_sequence_alone(tiny_title_setup):
    from genrec.decoding.search import score_continuations

    setup, model = tiny_title_setup
    prompt = setup.encoder.prompt_ids(setup.split.example(setup.split.eval_users[0], "test", 5))
    sequences = [setup.index.sequences[i] for i in range(8)]  # titles of different lengths
    for penalty in (0.0, 1.0):
        shared = score_continuations(model, prompt, sequences, penalty)
        alone = score_items(model, prompt, ItemIndex(sequences), length_penalty=penalty)
        assert torch.allclose(shared, alone, atol=1e-4)


def test_faithful_selection_cites_the_evidence_the_model_relies_on(tiny_overrides, monkeypatch):
    import genrec.explain.generation as explaining
    from genrec.recommender import Recommender

    cfg = load_config(None, [*tiny_overrides, f"prompt.template={EXPLAIN}", "items.identifier=atomic",
                             "prompt.chat=off", "run.checkpoint=base", "explain.cowatch_min=1"])
    rec, _ = Recommender.load(cfg)
    setup = rec.setup
    cases = []
    for user in setup.split.eval_users:
        ex = setup.split.example(user, "test", 5)
        cands = setup.explainer.candidates(setup.explainer.evidence.build(ex.user_id, ex.history, ex.target))
        sets = {frozenset(c.cited) for c in cands if c.cited}
        if len(sets) >= 2:
            cases.append((ex, cands, sets))
    assert cases, "the toy data should give users with two different kinds of cited evidence"
    for ex, cands, sets in cases[:3]:
        # the model relies on exactly one history item: without it the item scores 5 lower
        key = min(frozenset.union(*sets) - frozenset.intersection(*sets))
        monkeypatch.setattr(explaining, "item_logprob",
                            lambda r, user, history, item: 0.0 if key in history else -5.0)
        text = rec.explain([ex], [ex.target], "grounded")[0]
        chosen = next(c for c in cands if c.text == text)
        assert key in chosen.cited
        # nothing matters to the model: the choice is the likeliest candidate, citing or not
        monkeypatch.setattr(explaining, "item_logprob", lambda r, user, history, item: 0.0)
        assert rec.explain([ex], [ex.target], "grounded") == \
            Recommender(rec.model, replace_select(setup, "likeliest")).explain([ex], [ex.target], "grounded")


def replace_select(setup, select: str):
    from dataclasses import replace

    return replace(setup, cfg=replace(setup.cfg, explain=replace(setup.cfg.explain, select=select)))


def test_recommend_explain_and_benchmark_end_to_end(tiny_overrides, tmp_path, capsys):
    overrides = [*tiny_overrides, f"prompt.template={EXPLAIN}", "items.identifier=atomic", "prompt.chat=off",
                 "train.objective=target", "train.item_softmax=false", "train.epochs=1", "train.eval_users=4"]
    load_recipe("finetune").main(overrides)
    user = load_config(None, overrides).run.output_dir
    rows = load_recipe("recommend").main([*overrides, "recommend.user_id=3", "recommend.k=3", "explain=true"])
    assert len(rows) == 3 and all(isinstance(r["explanation"], str) and r["explanation"] for r in rows)
    written = [json.loads(line) for line in (Path(user) / "recommendations.jsonl").read_text().splitlines()]
    assert [r["explanation"] for r in written] == [r["explanation"] for r in rows]
    assert all(r["claims"] >= 1 and r["claims_true"] == r["claims"] for r in rows)  # grounded decoding
    assert "because" in capsys.readouterr().out.lower()


def test_explain_benchmark_scores_the_recipe_beside_the_baselines(tiny_overrides, tmp_path):
    import os
    import subprocess
    import sys

    # the shipped recipe, on the tiny model and toy data
    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "prompt.template="))]
    overrides += ["explain.max_new_tokens=12", "explain.cowatch_min=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_RECIPES_IN_PROCESS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "explain.py"), "--users", "6", "--out", str(tmp_path / "e"),
           "--set", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["users"] == 6 and result["decoding"] == "grounded"
    for key in ("item_grounding_precision", "history_grounding_precision", "hallucinated_title_rate",
                "necessity_vs_random", "bleu4", "rougeL", "usr", "fmr"):
        assert result[key] == result["rows"]["e2_grounded"][key]
    rows = result["rows"]
    assert set(rows) == {"e2_grounded", "e2_free", "e1_grounded", "e1_free", "oracle", "generic"}
    # grounded decoding and the oracle only ever say true things; the oracle is its own reference
    for name in ("e2_grounded", "e1_grounded", "oracle"):
        assert rows[name]["item_grounding_precision"] == 1.0 and rows[name]["history_grounding_precision"] == 1.0
        assert rows[name]["hallucinated_title_rate"] == 0.0
    assert rows["oracle"]["bleu4"] == 100.0 and rows["generic"]["history_claims"] == 0.0
    records = [json.loads(line) for line in (tmp_path / "e" / "explanations.jsonl").read_text().splitlines()]
    assert len(records) == 12 and {"user", "item", "rating", "feature", "explanation"} <= set(records[0])


def test_cli_writes_reference_records(tiny_overrides, tmp_path):
    from genrec.cli import main

    out = tmp_path / "train.jsonl"
    assert main(["explanations", "--config", str(REPO / "recipes/configs/ml100k/smollm2_explain.yaml"),
                 "--split", "train", "--out", str(out), *[o for o in tiny_overrides if o.startswith("data.")],
                 "explain.cowatch_min=1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and {"user", "item", "rating", "feature", "explanation", "family", "cited"} <= set(rows[0])
    assert {r["family"] for r in rows} <= set(BANKS)
    assert all(r["rating"] is not None for r in rows)  # the toy data rates every interaction
