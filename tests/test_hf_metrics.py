"""genrec's metrics as Hugging Face `evaluate` modules, loaded offline from the package's own files."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest

from genrec.evaluation.metrics import ranking_metrics
from genrec.explain.metrics import text_metrics
from genrec.hf_metrics import MODULES, module_path

evaluate = pytest.importorskip("evaluate")  # a declared dependency: always installed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """One private cache of evaluate's module copies for this file (evaluate puts it on sys.path once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.mktemp("hf-modules"))
        yield


@pytest.fixture()
def offline(monkeypatch, module_cache):
    """No network at all, so nothing can come from the hub."""
    def refuse(*args, **kwargs):
        raise AssertionError("evaluate.load tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


PREDICTIONS = [[3, 1, 2], [5, 4, 0], [9, 7, 6]]
REFERENCES = [1, 0, 8]  # rank 2, rank 3, not ranked


def test_ranking_module_gives_genrec_numbers(offline):
    ranking = evaluate.load(module_path("ranking"))
    got = ranking.compute(predictions=PREDICTIONS, references=REFERENCES, ks=[1, 2, 3], catalog_size=10)
    assert got == ranking_metrics(PREDICTIONS, REFERENCES, 10, (1, 2, 3))
    # the values by hand: NDCG = 1/log2(rank + 1), MRR = 1/rank, averaged over the 3 users
    assert got["hit@1"] == 0.0 and got["hit@2"] == pytest.approx(1 / 3) and got["hit@3"] == pytest.approx(2 / 3)
    assert got["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert got["coverage@10"] == pytest.approx(9 / 10) and got["valid_item_rate"] == 1.0 and got["users"] == 3


def test_ranking_module_takes_string_ids_and_a_script_path(offline):
    ranking = evaluate.load(str(Path(module_path("ranking")) / "ranking.py"))
    got = ranking.compute(predictions=[["b", "a", "c"], ["x", "x", "y"]], references=["a", "z"], ks=[1, 3])
    assert got == {"hit@1": 0.0, "ndcg@1": 0.0, "mrr@1": 0.0, "hit@3": 0.5,
                   "ndcg@3": pytest.approx(0.5 / math.log2(3)), "mrr@3": 0.25,
                   "duplicate_rate": pytest.approx(1 / 6), "users": 2}


def test_explanation_module_gives_genrec_numbers(offline):
    generated = ["you like Drama films", "a Comedy pick", "a Comedy pick"]
    references = ["you love Drama", "a Comedy for you", "Sci-Fi again"]
    features = ["Drama", "Comedy", "Sci-Fi"]
    text = evaluate.load(module_path("explanation"))
    got = text.compute(predictions=generated, references=references, features=features)
    assert got == text_metrics(generated, references, features, set(features))
    assert got["usr"] == pytest.approx(round(2 / 3, 4)) and got["fmr"] == pytest.approx(round(2 / 3, 4))
    assert got["fcr"] == pytest.approx(round(2 / 3, 4))  # Drama and Comedy of 3 features
    assert got["div"] == pytest.approx(round(1 / 3, 4))  # the two Comedy texts share one feature, of 3 pairs


def test_modules_ship_in_the_package():
    import genrec

    package = Path(genrec.__file__).parent
    for name in MODULES:
        assert (package / "hf_metrics" / name / f"{name}.py").is_file()
        assert (package / "hf_metrics" / name / "__init__.py").is_file()  # found by setuptools' package discovery
    with pytest.raises(ValueError, match="available: ranking, explanation"):
        module_path("bleu")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'include = ["genrec*"]' in pyproject
