"""Leave-one-out ranking metrics of genrec as a Hugging Face ``evaluate`` module.

``predictions``: one ranked list of item ids per user (best first); ``references``: the user's held-out
item id. Returns hit@K (HR), ndcg@K and mrr@K for every K of ``ks`` (default 1, 5, 10, 20) plus
duplicate_rate and users, computed by genrec.evaluation.metrics.ranking_metrics (NDCG@K = 1 / log2(rank + 1),
MRR@K = 1 / rank, 0 beyond K). With ``catalog_size`` (ids are then catalog indices 0..n-1) it also
returns valid_item_rate and coverage@10, exactly as ``recipes/evaluate.py`` reports them.

    import evaluate
    from genrec.hf_metrics import module_path
    ranking = evaluate.load(module_path("ranking"))
    ranking.compute(predictions=[[3, 1, 2], [5, 4, 0]], references=[1, 9], ks=[1, 3])
"""

from __future__ import annotations

import datasets
import evaluate

from genrec.evaluation.metrics import ranking_metrics

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of ranked lists of item ids (int or str), best first, one per user.
    references: the held-out item id of each user.
    ks: the cut-offs K (default [1, 5, 10, 20]).
    catalog_size: optional number of catalog items; ids must then be catalog indices 0..catalog_size-1,
        and valid_item_rate and coverage@10 are added.
Returns:
    hit@K, ndcg@K, mrr@K for each K, duplicate_rate, users (and valid_item_rate, coverage@10 with catalog_size).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ranking(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                   "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                   "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, ks=(1, 5, 10, 20), catalog_size=None):
        ks = tuple(int(k) for k in ks)
        if catalog_size is not None:
            return ranking_metrics([list(p) for p in predictions], list(references), int(catalog_size), ks)
        # any ids: number them (the ranks do not depend on how), then drop what needs the catalog
        number: dict = {}
        rankings = [[number.setdefault(i, len(number)) for i in p] for p in predictions]
        targets = [number.setdefault(t, len(number)) for t in references]
        out = ranking_metrics(rankings, targets, len(number), ks)
        return {k: v for k, v in out.items() if k not in ("valid_item_rate", "coverage@10")}
