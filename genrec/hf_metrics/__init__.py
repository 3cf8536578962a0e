"""genrec's metrics as Hugging Face ``evaluate`` modules, loaded from these local files (no hub fetch).

    import evaluate
    from genrec.hf_metrics import module_path

    ranking = evaluate.load(module_path("ranking"))   # HR / NDCG / MRR @K of ranked lists of item ids
    ranking.compute(predictions=[[3, 1, 2], [5, 4]], references=[1, 9], ks=[1, 2])

    text = evaluate.load(module_path("explanation"))  # BLEU-1/4, ROUGE-1/2/L, USR, FMR, FCR, DIV
    text.compute(predictions=["..."], references=["..."], features=["Drama"])

Each module is a folder holding ``<name>/<name>.py``, the layout ``evaluate.load`` expects of a local
path; the numbers are genrec's own (genrec.evaluation.metrics.ranking_metrics, genrec.explain.metrics.text_metrics).
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("ranking", "explanation")


def module_path(name: str) -> str:
    """The folder to give ``evaluate.load`` for one of :data:`MODULES`."""
    if name not in MODULES:
        raise ValueError(f"unknown genrec metric module {name!r}; available: {', '.join(MODULES)}")
    return str(Path(__file__).resolve().parent / name)
