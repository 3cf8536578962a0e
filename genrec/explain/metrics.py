"""Text-quality metrics for generated recommendation explanations.

The definitions follow the PETER / PEPLER explainable-recommendation papers
(Li et al., ACL 2021 / TOIS 2023). Every function is pure and deterministic;
nothing is downloaded at run time.

Reference-based (one reference explanation per generated one, scores in [0, 100]):

- BLEU-1 / BLEU-4: corpus BLEU from sacrebleu (13a tokenizer, case-sensitive,
  exponential smoothing) with maximum n-gram order 1 and 4. ``effective_order``
  is on so a corpus of explanations all shorter than four tokens is scored on
  the orders it has instead of collapsing to 0.
- ROUGE-1 / ROUGE-2 / ROUGE-L: mean per-pair F1 from rouge-score with the
  Porter stemmer (nltk's, which needs no data files). A one-token pair has no
  bigrams, so its ROUGE-2 is 0 even when the two texts are identical.

Reference-free:

- USR (unique sentence ratio): distinct generated sentences (whitespace-stripped,
  lowercased) / number generated. Low USR means the model repeats a few templates.
- FMR (feature matching ratio): share of generated texts that mention their own
  record's key feature.
- FCR (feature coverage ratio): distinct vocabulary features mentioned in any
  generated text / vocabulary size.
- DIV (feature diversity): mean, over all unordered pairs of generated texts,
  of the number of vocabulary features the two share. Lower is more diverse.

Features match case-insensitively as whole tokens: a feature may not be glued to
a word character, an apostrophe or a hyphen on either side, so "Drama" does not
match "Dramatic" and "Fi" does not match "Sci-Fi", while "Children's" and
"Film-Noir" match as a whole.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _check_same_length(generated: Sequence[str], other: Sequence[object], other_name: str) -> None:
    if len(generated) != len(other):
        raise ValueError(f"need one {other_name} entry per generated text: "
                         f"got {len(generated)} generated and {len(other)} {other_name}")


@lru_cache(maxsize=2)
def _bleu_metric(max_ngram_order: int) -> BLEU:
    return BLEU(max_ngram_order=max_ngram_order, effective_order=True)


def bleu(generated: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU-1 and BLEU-4 in [0, 100], one reference per generated text."""
    _check_same_length(generated, references, "references")
    if not generated:
        return {"bleu1": 0.0, "bleu4": 0.0}
    # sacrebleu takes a list of reference streams; we have exactly one stream.
    streams = [list(references)]
    return {
        "bleu1": _bleu_metric(1).corpus_score(list(generated), streams).score,
        "bleu4": _bleu_metric(4).corpus_score(list(generated), streams).score,
    }


@lru_cache(maxsize=1)
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(generated: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 in [0, 100] over (generated, reference) pairs."""
    _check_same_length(generated, references, "references")
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    scorer = _rouge_scorer()
    for hypothesis, reference in zip(generated, references):
        scores = scorer.score(reference, hypothesis)  # rouge-score's order is (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = len(generated)
    return {name: 100.0 * total / n if n else 0.0 for name, total in totals.items()}


def unique_sentence_ratio(generated: list[str]) -> float:
    """Distinct generated sentences (stripped, lowercased) / number generated."""
    if not generated:
        return 0.0
    return len({text.strip().lower() for text in generated}) / len(generated)


@lru_cache(maxsize=4096)
def _feature_pattern(feature: str) -> re.Pattern[str]:
    # Apostrophes and hyphens count as part of a token so multi-part features
    # ("Sci-Fi", "Children's") match whole and their parts do not match alone.
    return re.compile(rf"(?<![\w'-]){re.escape(feature)}(?![\w'-])", re.IGNORECASE)


def mentions_feature(text: str, feature: str | None) -> bool:
    """Whether text contains feature as a whole token, ignoring case; None/empty never matches."""
    if not feature or not feature.strip():
        return False
    return _feature_pattern(feature.strip()).search(text) is not None


def _features_in(text: str, vocabulary: Iterable[str]) -> set[str]:
    return {feature for feature in vocabulary if mentions_feature(text, feature)}


def feature_matching_ratio(generated: list[str], features: list[str | None]) -> float:
    """Share of generated texts that mention their own record's key feature."""
    _check_same_length(generated, features, "features")
    if not generated:
        return 0.0
    matched = sum(mentions_feature(text, feature) for text, feature in zip(generated, features))
    return matched / len(generated)


def feature_coverage_ratio(generated: list[str], vocabulary: set[str]) -> float:
    """Distinct vocabulary features mentioned anywhere in generated / len(vocabulary)."""
    if not vocabulary:
        return 0.0
    covered = {feature for feature in vocabulary
               if any(mentions_feature(text, feature) for text in generated)}
    return len(covered) / len(vocabulary)


def feature_diversity(generated: list[str], vocabulary: set[str]) -> float:
    """Mean |F_i ∩ F_j| over unordered pairs of generated texts (lower = more diverse).

    A feature found in c texts is shared by C(c, 2) pairs, so summing that over
    features gives the pairwise total in O(n·|vocabulary|) instead of O(n²).
    """
    n = len(generated)
    if n < 2:
        return 0.0
    texts_per_feature: Counter[str] = Counter()
    for text in generated:
        texts_per_feature.update(_features_in(text, vocabulary))
    shared_pairs = sum(c * (c - 1) // 2 for c in texts_per_feature.values())
    return shared_pairs / (n * (n - 1) // 2)


def text_metrics(generated: list[str], references: list[str], features: list[str | None],
                 vocabulary: set[str]) -> dict[str, float]:
    """All explanation metrics in one flat dict, rounded to 4 decimals.

    Keys: bleu1, bleu4, rouge1, rouge2, rougeL (in [0, 100]); usr, fmr, fcr (in
    [0, 1]); div (mean shared features per pair of texts).
    """
    _check_same_length(generated, references, "references")
    _check_same_length(generated, features, "features")
    out: dict[str, float] = {}
    out.update(bleu(generated, references))
    out.update(rouge(generated, references))
    out["usr"] = unique_sentence_ratio(generated)
    out["fmr"] = feature_matching_ratio(generated, features)
    out["fcr"] = feature_coverage_ratio(generated, vocabulary)
    out["div"] = feature_diversity(generated, vocabulary)
    return {name: round(float(value), 4) for name, value in out.items()}
