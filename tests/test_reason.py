"""Reason, then recommend: rationales built from the history alone, the template's rationale line, the
encoder's labels, generation up to the newline, and a tiny end-to-end run with the rationale metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers_recipes import load_recipe

from genrec.causal.rationale import RationaleBuilder, named_genres, rationale_metrics
from genrec.config import ReasonConfig, load_config
from genrec.data.catalog import Catalog
from genrec.data.splits import Example, Split
from genrec.decoding.search import greedy_lines
from genrec.errors import ConfigError, TemplateError
from genrec.prompts.encoding import IGNORE_INDEX
from genrec.prompts.template import PromptTemplate
from genrec.recommender import prepare

REPO = Path(__file__).resolve().parents[1]
REASON = REPO / "prompts" / "reason_then_recommend.yaml"


@pytest.fixture()
def films() -> Split:
    frame = pd.DataFrame({
        "movie_title": ["Heat", "Fargo", "Alien", "Clue", "Babe", "Glory"],
        "release_year": ["1995", "1996", "1979", "1985", "1995", "1989"],
        "class": ["Action Crime", "Crime Drama", "Horror Sci-Fi", "Comedy", "Children's Comedy", "Drama War"],
    }, index=["1", "2", "3", "4", "5", "6"])
    catalog = Catalog.build(frame.index, frame, "{movie_title} ({release_year})", "item_{item_id}")
    sequences = {"u": [0, 1, 2, 3, 4, 5]}
    ratings = {"u": {0: 5.0, 1: 4.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}}
    return Split(catalog, sequences, ratings)


def test_rationale_hand_built_from_the_history(films):
    builder = RationaleBuilder(films, ReasonConfig())
    # history Heat, Fargo, Alien, Clue, Babe: Crime 2, Comedy 2 (ties by name), decades 1990s x3
    # anchors: most recent rated >= 4 -> Babe (4), then Fargo (4)
    assert builder.build("u", (0, 1, 2, 3, 4)) == \
        "likes Comedy (2) and Crime (2); mostly 1990s; loved Babe (1995) and Fargo (1996)"
    assert builder.build("u", (2,)) == "likes Horror (1) and Sci-Fi (1); mostly 1970s"
    assert builder.build("nobody", ()) == "no clear taste yet"
    fewer = RationaleBuilder(films, ReasonConfig(top_genres=1, anchors=0, year_field=None))
    assert fewer.build("u", (0, 1, 2, 3, 4)) == "likes Comedy (2)"


def test_rationale_never_reads_the_target(films):
    builder = RationaleBuilder(films, ReasonConfig())
    history = (0, 1, 2)
    built = {builder.attach([Example("u", history, target)])[0].rationale for target in (3, 4, 5)}
    assert len(built) == 1  # same history, any target: the same rationale
    # the target's own rating (Glory, 5) and genres (War) never appear
    assert "Glory" not in built.pop()


def test_named_genres_reads_the_likes_clause_only(films):
    vocabulary = RationaleBuilder(films, ReasonConfig()).vocabulary()
    assert named_genres("likes Crime (2) and Sci-Fi (1); mostly 1990s; loved War Games (1983)", vocabulary) == \
        {"Crime", "Sci-Fi"}
    assert named_genres("Children's and Comedy movies", vocabulary) == {"Children's", "Comedy"}


def test_rationale_metrics_hand_computed(films):
    builder = RationaleBuilder(films, ReasonConfig())
    lists = [[1, 2, 3], [4, 0]]
    generated = ["likes Crime (2)", "likes Comedy (1) and Horror (1)"]
    reference = ["likes Crime (2)", "likes Comedy (1) and Drama (1)"]
    m = rationale_metrics(lists, generated, reference, builder, k=10)
    # user 1: Fargo (Crime) yes, Alien no, Clue no; user 2: Babe (Comedy) yes, Heat no -> 2 of 5
    assert m["rationale_genre_match@10"] == pytest.approx(2 / 5)
    assert m["rationale_genre_precision"] == pytest.approx(2 / 3)  # Crime, Comedy right; Horror not
    assert m["rationale_exact"] == pytest.approx(1 / 2)


def test_rationale_template_key_renders_one_line(films):
    template = PromptTemplate.load(REASON)
    assert template.has_rationale
    example = Example("u", (0, 1), 2, rationale="likes Crime (2)")
    assert template.render_rationale(example, films.catalog, "atomic") == " Taste: likes Crime (2)."
    with pytest.raises(TemplateError, match="rationale"):
        template.render_rationale(Example("u", (0, 1), 2), films.catalog, "atomic")
    two_lines = PromptTemplate("t.yaml", "name: t\nprompt: '{{ history }}'\ncompletion: '{{ target }}'\n"
                               "rationale: \"{{ rationale }}\\nmore\"\n")
    with pytest.raises(TemplateError, match="one line"):
        two_lines.check(films.catalog, "title")


def reason_overrides(tiny_overrides: list[str], *extra: str) -> list[str]:
    kept = [o for o in tiny_overrides if not o.startswith("prompt.template=")]
    return kept + [f"prompt.template={REASON}", "prompt.chat=off", "items.identifier=atomic", "train.objective=target",
                   "train.item_softmax=false", "reason.genre_field=class", *extra]


def test_encoder_puts_loss_on_the_rationale_line_and_the_item(tiny_overrides):
    setup = prepare(load_config(None, reason_overrides(tiny_overrides)))
    example = setup.training_examples()[3]
    assert example.rationale and example.rationale.startswith("likes Drama")
    enc = setup.encoder.encode(example)
    prompt = setup.encoder.prompt_ids(example)
    line = setup.encoder.rationale_ids(f" Taste: {example.rationale}.")
    item = setup.item_tokens[example.target]
    assert enc["input_ids"] == prompt + line + [item]
    assert enc["labels"] == [IGNORE_INDEX] * len(prompt) + line + [item]
    assert line[-1] in setup.encoder.newline_tokens().tolist()  # the line ends with the stop signal
    with pytest.raises(ConfigError, match="train.objective=target"):
        prepare(load_config(None, reason_overrides(tiny_overrides)[:-5] + [
            "items.identifier=atomic", "train.objective=sequence"])).training_examples()


def test_greedy_lines_stop_at_the_first_stop_token(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    prompts = [[5, 6, 7], [8, 9]]
    free = greedy_lines(model, prompts, torch.tensor([399]), max_new_tokens=6)
    assert [len(x) for x in free] == [6, 6]  # 399 never comes: the limit cuts the lines
    stop = free[0][2]  # make the third generated token of the first prompt a stop token
    cut = greedy_lines(model, prompts, torch.tensor([stop]), max_new_tokens=6)
    assert cut[0] == free[0][: free[0].index(stop) + 1]
    assert all(t != stop for t in cut[1][:-1])


@pytest.fixture(scope="module")
def reason_run(tiny_model_dir, toy_data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("reason") / "run"
    base = [f"run.output_dir={run}", f"data.path={toy_data_dir}", "data.dataset=toy", "data.max_history=5",
            f"model.name_or_path={tiny_model_dir}", "model.dtype=float32", "train.batch_size=4", "train.eval_users=6",
            "decode.batch_users=4", "train.epochs=6", "train.lr=3e-3", "adapter.dropout=0.0", "reason.max_new_tokens=24"]
    overrides = reason_overrides(base)
    load_recipe("finetune").main(overrides)
    return run, overrides, load_recipe("evaluate").main(overrides)


def test_reason_run_writes_rationales_and_scores_them(reason_run):
    run, _, results = reason_run
    m = results["metrics"]
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0
    for key in ("rationale_genre_match@10", "rationale_genre_precision", "rationale_exact"):
        assert 0.0 <= m[key] <= 1.0
    rows = [json.loads(x) for x in (run / "rankings.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(isinstance(r["rationale"], str) and "\n" not in r["rationale"] for r in rows)
    # toy items are all Drama: a model that learned the line names it, and every item then matches
    assert sum("Drama" in r["rationale"] for r in rows) >= 12


def test_swapped_rationales_are_used_as_given(reason_run):
    from genrec.recommender import Recommender

    _, overrides, _ = reason_run
    rec, _ = Recommender.load(load_config(None, overrides))
    split = rec.setup.split
    users = split.eval_users[:4]
    examples = [split.example(u, "test", 5) for u in users]
    seen = [split.seen(u, "test") for u in users]
    own = rec.rank(examples, seen, 10)
    lines = own.rationales
    swapped = lines[1:] + lines[:1]
    again = rec.rank(examples, seen, 10, rationales=swapped)
    assert again.rationales == swapped
    prompts = [rec.setup.encoder.prompt_ids(ex) + line for ex, line in zip(examples, swapped)]
    from genrec.decoding.search import constrained_topk

    direct = constrained_topk(rec.model, prompts, rec.setup.index, k=10, num_beams=20, excluded=seen,
                              pad_id=rec.setup.tokenizer.pad_token_id)
    assert [[i for i, _ in r] for r in again.items] == [[i for i, _ in r] for r in direct]
    assert own.items != again.items or len(set(map(tuple, lines))) == 1


def test_recommend_prints_the_rationale(reason_run, capsys):
    _, overrides, _ = reason_run
    rows = load_recipe("recommend").main(overrides + ["recommend.user_id=3", "recommend.k=5"])
    assert len(rows) == 5 and len({r["rationale"] for r in rows}) == 1
    assert "rationale:" in capsys.readouterr().out
