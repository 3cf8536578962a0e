"""Explanation text metrics checked against values computed by hand."""

from __future__ import annotations

import itertools
import random

import pytest

from genrec.explain.metrics import (
    bleu,
    feature_coverage_ratio,
    feature_diversity,
    feature_matching_ratio,
    mentions_feature,
    rouge,
    text_metrics,
    unique_sentence_ratio,
)

TEXTS = ["the cat sat on the mat", "a great comedy with a warm heart", "ok"]


# --- BLEU -------------------------------------------------------------------------------------

def test_bleu_is_100_for_identical_texts_even_shorter_than_four_tokens():
    assert bleu(TEXTS, TEXTS) == pytest.approx({"bleu1": 100.0, "bleu4": 100.0})


def test_bleu4_of_a_corpus_of_short_texts_uses_the_orders_it_has():
    # No text reaches 3 tokens: without effective order BLEU-4 would be ~0 for a perfect match.
    short = ["ok", "the cat"]
    assert bleu(short, short)["bleu4"] == pytest.approx(100.0)


def test_bleu_drops_strictly_when_one_text_changes():
    changed = [TEXTS[0].replace("mat", "rug"), *TEXTS[1:]]
    scores = bleu(changed, TEXTS)
    assert 0.0 < scores["bleu1"] < 100.0
    assert 0.0 < scores["bleu4"] < scores["bleu1"]


def test_bleu1_hand_example():
    # 2 of 3 hypothesis unigrams appear in the reference, equal lengths so BP = 1.
    assert bleu(["the cat sat"], ["the cat ran"])["bleu1"] == pytest.approx(200 / 3, abs=0.01)


def test_bleu1_brevity_penalty_hand_example():
    # All 2 unigrams match, but hypothesis length 2 < reference length 4: BP = exp(1 - 4/2).
    assert bleu(["the cat"], ["the cat sat down"])["bleu1"] == pytest.approx(100 * 2.718281828 ** -1, abs=0.01)


# --- ROUGE ------------------------------------------------------------------------------------

def test_rouge_is_100_for_identical_texts():
    two_tokens_or_more = TEXTS[:2]
    assert rouge(two_tokens_or_more, two_tokens_or_more) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


def test_rouge2_of_a_one_token_text_is_zero_even_when_identical():
    # No bigrams on either side: rouge-score reports F1 = 0 (unlike BLEU's effective order).
    assert rouge(["ok"], ["ok"]) == pytest.approx({"rouge1": 100.0, "rouge2": 0.0, "rougeL": 100.0})


def test_rouge_drops_strictly_when_one_text_changes():
    changed = [TEXTS[0].replace("mat", "rug"), *TEXTS[1:]]
    scores = rouge(changed, TEXTS)
    assert all(0.0 < scores[name] < 100.0 for name in ("rouge1", "rouge2", "rougeL"))


def test_rouge_hand_example():
    # hyp: the cat sat on the mat / ref: the cat lay on a mat (6 tokens each)
    # unigram overlap (clipped): the, cat, on, mat = 4 -> P = R = F = 4/6
    # bigram overlap: "the cat" only, of 5 each -> F = 1/5
    # LCS: the cat on mat = 4 -> F = 4/6
    scores = rouge(["the cat sat on the mat"], ["the cat lay on a mat"])
    assert scores["rouge1"] == pytest.approx(200 / 3, abs=0.01)
    assert scores["rouge2"] == pytest.approx(20.0, abs=0.01)
    assert scores["rougeL"] == pytest.approx(200 / 3, abs=0.01)


def test_rouge_uses_the_stemmer_and_averages_over_pairs():
    # cats/cat and running/runs stem alike (first pair 100); second pair shares nothing (0).
    scores = rouge(["cats running", "alpha"], ["cat runs", "omega"])
    assert scores["rouge1"] == pytest.approx(50.0)


# --- USR --------------------------------------------------------------------------------------

def test_unique_sentence_ratio_ignores_case_and_surrounding_whitespace():
    assert unique_sentence_ratio(["a b", "A b ", "c"]) == pytest.approx(2 / 3)


def test_unique_sentence_ratio_of_nothing_is_zero():
    assert unique_sentence_ratio([]) == 0.0


# --- feature matching ------------------------------------------------------------------------

def test_feature_matching_ratio_hand_example():
    # 1st mentions Comedy; 2nd lacks Drama; 3rd has no feature.
    fmr = feature_matching_ratio(["a Comedy film", "a comedy", "x"], ["Comedy", "Drama", None])
    assert fmr == pytest.approx(1 / 3)


@pytest.mark.parametrize("text, feature, expected", [
    ("a Dramatic turn", "Drama", False),
    ("a drama.", "Drama", True),
    ("(drama)", "Drama", True),
    ("great sci-fi!", "Sci-Fi", True),
    ("great sci-fi!", "Fi", False),
    ("great sci-fi!", "Sci", False),
    ("a children's film", "Children's", True),
    ("a children film", "Children's", False),
    ("a film-noir classic", "Film-Noir", True),
    ("a film noir classic", "Film-Noir", False),
    ("neo-noir", "Noir", False),
    ("anything", "", False),
    ("anything", None, False),
    ("a.b c", "a.b", True),
    ("axb c", "a.b", False),  # the feature is escaped, not a regex
])
def test_features_match_as_whole_tokens(text, feature, expected):
    assert mentions_feature(text, feature) is expected


# --- FCR / DIV --------------------------------------------------------------------------------

VOCABULARY = {"Comedy", "Drama", "Sci-Fi", "Film-Noir"}
GENRE_TEXTS = [
    "A Comedy with some drama",  # {Comedy, Drama}
    "sci-fi comedy",             # {Sci-Fi, Comedy}
    "a dramatic film noir",      # {} : neither "Drama" nor "Film-Noir" as whole tokens
]


def test_feature_coverage_ratio_hand_example():
    assert feature_coverage_ratio(GENRE_TEXTS, VOCABULARY) == pytest.approx(3 / 4)


def test_feature_coverage_ratio_of_empty_vocabulary_is_zero():
    assert feature_coverage_ratio(GENRE_TEXTS, set()) == 0.0


def test_feature_diversity_hand_example():
    # pairs: (1,2) share Comedy -> 1; (1,3) -> 0; (2,3) -> 0; mean over 3 pairs.
    assert feature_diversity(GENRE_TEXTS, VOCABULARY) == pytest.approx(1 / 3)


def test_feature_diversity_needs_two_texts():
    assert feature_diversity(["comedy"], VOCABULARY) == 0.0
    assert feature_diversity([], VOCABULARY) == 0.0


def test_feature_diversity_equals_brute_force_pairwise_mean():
    rng = random.Random(1234)
    vocabulary = {"comedy", "drama", "sci-fi", "film-noir", "children's", "war", "sci"}
    fillers = ["a", "film", "noir", "the", "children", "warm", "dramatic", "fi"]
    words = sorted(vocabulary) + fillers
    token_lists = [[rng.choice(words) for _ in range(rng.randint(0, 6))] for _ in range(40)]
    texts = [" ".join(w.upper() if rng.random() < 0.3 else w for w in tokens) for tokens in token_lists]
    # Texts are space-joined tokens, so a text's features are exactly its tokens in the vocabulary.
    feature_sets = [{w for w in tokens if w in vocabulary} for tokens in token_lists]
    pairs = list(itertools.combinations(feature_sets, 2))
    brute_force = sum(len(a & b) for a, b in pairs) / len(pairs)
    assert brute_force > 0  # the example is not degenerate
    assert feature_diversity(texts, vocabulary) == pytest.approx(brute_force)


# --- combined and errors ----------------------------------------------------------------------

def test_text_metrics_combines_everything_rounded():
    references = ["a comedy with some drama", "sci-fi comedy", "a film noir"]
    out = text_metrics(GENRE_TEXTS, references, ["Comedy", "Drama", "Film-Noir"], VOCABULARY)
    assert list(out) == ["bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "usr", "fmr", "fcr", "div"]
    assert all(value == round(value, 4) for value in out.values())
    assert out["usr"] == 1.0
    assert out["fmr"] == pytest.approx(round(1 / 3, 4))
    assert out["fcr"] == 0.75
    assert out["div"] == pytest.approx(round(1 / 3, 4))
    assert out["bleu1"] == round(bleu(GENRE_TEXTS, references)["bleu1"], 4)
    assert out["rougeL"] == round(rouge(GENRE_TEXTS, references)["rougeL"], 4)


@pytest.mark.parametrize("call", [
    lambda: bleu(["a", "b"], ["a"]),
    lambda: rouge(["a", "b"], ["a"]),
    lambda: feature_matching_ratio(["a", "b"], ["a"]),
    lambda: text_metrics(["a", "b"], ["a"], ["a", "b"], VOCABULARY),
    lambda: text_metrics(["a", "b"], ["a", "b"], ["a"], VOCABULARY),
])
def test_length_mismatch_raises_naming_both_lengths(call):
    with pytest.raises(ValueError, match=r"2 generated and 1 "):
        call()


def test_empty_inputs_score_zero():
    assert bleu([], []) == {"bleu1": 0.0, "bleu4": 0.0}
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert feature_matching_ratio([], []) == 0.0
