"""Explanation text metrics of genrec (PETER / PEPLER definitions) as a Hugging Face ``evaluate`` module.

``predictions``: generated explanations; ``references``: one reference explanation each. Optional
``features`` (each record's key feature, e.g. its genre) and ``vocabulary`` (all features; default: the
distinct ``features``). Returns bleu1, bleu4, rouge1, rouge2, rougeL (0-100), usr, fmr, fcr (0-1) and
div, computed by genrec.explain.metrics.text_metrics (sacrebleu and rouge-score; nothing downloaded).

    import evaluate
    from genrec.hf_metrics import module_path
    text = evaluate.load(module_path("explanation"))
    text.compute(predictions=["you like Drama"], references=["you love Drama"], features=["Drama"])
"""

from __future__ import annotations

import datasets
import evaluate

from genrec.explain.metrics import text_metrics

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated explanation texts.
    references: one reference explanation per prediction.
    features: optional key feature of each record (None where it has none); FMR needs them.
    vocabulary: optional set of all features (FCR, DIV); default the distinct non-empty features.
Returns:
    bleu1, bleu4, rouge1, rouge2, rougeL, usr, fmr, fcr, div (rounded to 4 decimals).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Explanation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, features=None, vocabulary=None):
        features = list(features) if features is not None else [None] * len(predictions)
        if vocabulary is None:
            vocabulary = {f for f in features if f}
        return text_metrics(list(predictions), list(references), features, set(vocabulary))
