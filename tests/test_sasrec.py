"""SASRec baseline: masking, padding, training, early stopping, ranking under the protocol, the recipe."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from genrec.baselines import sasrec
from genrec.cli import main as cli_main
from genrec.config import SASRecConfig, load_config
from genrec.data import load_split
from genrec.data.catalog import Catalog
from genrec.data.splits import Split
from genrec.errors import CheckpointError, ConfigError, DataError
from genrec.evaluation.protocol import score

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(hidden=16, inner=32, layers=1, heads=2, max_len=8, stride=4, batch_size=8, eval_batch=16)


def small(**kw) -> SASRecConfig:
    return SASRecConfig(**{**SMALL, **kw})


@pytest.fixture()
def toy_split(toy_data_dir) -> Split:
    return load_split(load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy"]))


def recipe_main():
    spec = importlib.util.spec_from_file_location("sasrec_recipe", REPO / "recipes" / "sasrec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def cyclic_split(n_items: int = 40, n_users: int = 80, seed: int = 0) -> Split:
    """Every user walks the catalog in order from a random start: the next item is always last + 1."""
    rng = random.Random(seed)
    catalog = Catalog.build([str(i) for i in range(1, n_items + 1)], None, "{item_id}", "item_{item_id}")
    sequences = {}
    for u in range(n_users):
        start = rng.randrange(n_items)
        sequences[str(u)] = [(start + t) % n_items for t in range(rng.randint(6, 14))]
    return Split(catalog=catalog, sequences=sequences)


# ---- the model -------------------------------------------------------------------------------------------

def test_log_probs_are_fp32_inside_an_autocast_and_zero_for_an_empty_history():
    torch.manual_seed(0)
    model = sasrec.SASRec(30, small(layers=2)).eval()
    histories = [[3, 7, 1], [], [2, 9, 4, 12, 5, 8, 6, 11, 13]]
    plain = sasrec.log_probs(model, histories, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the LLM's evaluation runs
        inside = sasrec.log_probs(model, histories, batch=2)
        bare = torch.log_softmax(sasrec.item_scores(model, [histories[0]]), -1)[0]  # its matmuls in bf16
    assert not torch.equal(bare, plain[0])  # so the autocast would change the scores
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)
    assert plain[1].abs().sum() == 0  # a cold history: no SASRec term
    expected = torch.log_softmax(sasrec.item_scores(model, [histories[2]]), -1)[0]
    torch.testing.assert_close(plain[2], expected)
    assert plain[0].exp().sum() == pytest.approx(1.0, abs=1e-5)


def test_causal_mask_hides_later_items():
    torch.manual_seed(0)
    model = sasrec.SASRec(30, small(layers=2)).eval()
    seq = torch.tensor([[3, 7, 1, 9, 4, 12, 5, 8]])
    changed = seq.clone()
    changed[0, 5] = 20
    a, b = model(seq), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4)


@pytest.mark.parametrize("norm_first", [False, True])
def test_padding_does_not_change_outputs(norm_first):
    torch.manual_seed(0)
    model = sasrec.SASRec(30, small(layers=2, norm_first=norm_first)).eval()
    seq = torch.tensor([[3, 7, 1, 9, 4]])
    padded = torch.tensor([[3, 7, 1, 9, 4, 0, 0, 0]])
    torch.testing.assert_close(model(seq), model(padded)[:, :5])
    # ranking a short history next to a long one (so it is padded) gives what it gives alone
    histories, excluded = [[2, 6, 0, 8, 3], [1, 2]], [set(), {5}]
    together = sasrec.rank(model, histories, excluded, k=10)
    alone = [sasrec.rank(model, [h], [e], k=10)[0] for h, e in zip(histories, excluded)]
    assert [[i for i, _ in r] for r in together] == [[i for i, _ in r] for r in alone]
    for r1, r2 in zip(together, alone):
        assert [s for _, s in r1] == pytest.approx([s for _, s in r2], abs=1e-5)


def test_training_windows_count_each_training_item_once(toy_split):
    inputs, targets = sasrec.training_windows(toy_split, max_len=4, stride=2)
    assert inputs.shape == targets.shape and inputs.shape[1] == 4
    counted = sorted(t for t in targets.flatten().tolist() if t != sasrec.IGNORE)
    expected = sorted(i for u in toy_split.sequences for i in toy_split.train_part(u)[1:])
    assert counted == expected  # every training item but each user's first is a target exactly once
    for x, y in zip(inputs.tolist(), targets.tolist()):  # a target is the item after its input position
        for j in range(3):
            if y[j] != sasrec.IGNORE and x[j + 1] != 0:
                assert x[j + 1] == y[j] + 1


# ---- training ---------------------------------------------------------------------------------------------

def test_loss_decreases(toy_split):
    p = small(hidden_dropout=0.0, attn_dropout=0.0, lr=1e-2, epochs=15, patience=100)
    torch.manual_seed(0)
    model = sasrec.SASRec(len(toy_split.catalog), p)
    inputs, targets = sasrec.training_windows(toy_split, p.max_len, p.stride)
    result = sasrec.fit(model, inputs, targets, p, seed=0, validate=lambda m: 0.0)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 15
    assert losses[-1] < 0.8 * losses[0]
    assert losses[0] == pytest.approx(torch.log(torch.tensor(30.0)).item(), rel=0.05)  # starts near uniform


def test_same_seed_same_model_other_seed_other_model(toy_split):
    p = small(epochs=3, patience=10)
    m1, r1 = sasrec.train(toy_split, p, seed=5)
    m2, r2 = sasrec.train(toy_split, p, seed=5)
    m3, _ = sasrec.train(toy_split, p, seed=6)
    assert r1.history == r2.history
    for name, tensor in m1.state_dict().items():
        assert torch.equal(tensor, m2.state_dict()[name]), name
    assert not torch.equal(m1.item_emb.weight, m3.item_emb.weight)


def test_early_stopping_restores_best_weights(toy_split):
    p = small(epochs=50, patience=3, lr=1e-2)
    torch.manual_seed(0)
    model = sasrec.SASRec(len(toy_split.catalog), p)
    inputs, targets = sasrec.training_windows(toy_split, p.max_len, p.stride)
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.05, 0.9])  # best at epoch 2, then 3 epochs without improvement
    snapshots = []

    def validate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scripted)

    result = sasrec.fit(model, inputs, targets, p, seed=0, validate=validate)
    assert (result.epochs, result.best_epoch, result.best_valid_ndcg10) == (5, 2, 0.3)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name
    assert not torch.equal(model.item_emb.weight, snapshots[-1]["item_emb.weight"])


def test_learns_a_deterministic_next_item():
    split = cyclic_split()
    p = small(hidden=32, inner=64, max_len=10, stride=5, hidden_dropout=0.1, attn_dropout=0.1, lr=1e-2,
              epochs=80, patience=10, batch_size=16)
    model, result = sasrec.train(split, p, seed=0)
    users = split.eval_users
    test = score(sasrec.rank_split(model, split, users, "test", 10, True), split, users, "test", [1, 10])
    assert result.best_valid_ndcg10 > 0.9
    assert test["hit@1"] >= 0.95  # chance is 1 / ~30 unseen items


def test_nothing_to_learn_is_a_user_error():
    catalog = Catalog.build(["1", "2", "3", "4"], None, "{item_id}", "item_{item_id}")
    split = Split(catalog=catalog, sequences={"a": [0, 1, 2], "b": [3, 2, 1]})  # one training item each
    with pytest.raises(DataError, match="nothing to learn"):
        sasrec.train(split, small(), seed=0)


# ---- ranking under the protocol ---------------------------------------------------------------------------

def test_rankings_exclude_seen_and_are_distinct_catalog_items(toy_split):
    torch.manual_seed(0)
    model = sasrec.SASRec(len(toy_split.catalog), small())
    users = toy_split.eval_users
    for split_name in ("valid", "test"):
        ranked = sasrec.rank_split(model, toy_split, users, split_name, 20, exclude_seen=True)
        for u in users:
            items = [i for i, _ in ranked[u]]
            seen = toy_split.seen(u, split_name)
            assert len(items) == min(20, 30 - len(seen)) == len(set(items))
            assert all(0 <= i < 30 for i in items) and not seen & set(items)
            scores = [s for _, s in ranked[u]]
            assert scores == sorted(scores, reverse=True)
    allowed = sasrec.rank_split(model, toy_split, users, "test", 20, exclude_seen=False)
    assert any(toy_split.seen(u, "test") & {i for i, _ in allowed[u]} for u in users)  # the rule is what removes them
    # fewer unseen items than k: only the unseen ones come back
    assert sorted(i for i, _ in sasrec.rank(model, [[0, 1]], [set(range(27))], k=10)[0]) == [27, 28, 29]


# ---- config ----------------------------------------------------------------------------------------------

def test_config_section_overrides_and_validation():
    cfg = load_config(None, ["sasrec.hidden=32", "sasrec.hidden_dropout=0.2", "sasrec.norm_first=true",
                             "sasrec.retrain=false"])
    assert (cfg.sasrec.hidden, cfg.sasrec.hidden_dropout, cfg.sasrec.norm_first, cfg.sasrec.retrain) == (32, 0.2, True, False)
    assert load_config().sasrec == SASRecConfig()
    with pytest.raises(ConfigError, match="did you mean 'hidden_dropout'"):
        load_config(None, ["sasrec.hiden_dropout=0.1"])
    with pytest.raises(ConfigError, match="sasrec.heads"):
        load_config(None, ["sasrec.hidden=30", "sasrec.heads=4"])
    with pytest.raises(ConfigError, match="sasrec.attn_dropout"):
        load_config(None, ["sasrec.attn_dropout=1.0"])
    with pytest.raises(ConfigError, match="sasrec.stride"):
        load_config(None, ["sasrec.stride=60"])


# ---- the recipe ------------------------------------------------------------------------------------------

def test_recipe_writes_results_scored_like_evaluate(toy_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [f"run.output_dir={out}", f"data.path={toy_data_dir}", "data.dataset=toy", "sasrec.epochs=3",
            *[f"sasrec.{k}={v}" for k, v in SMALL.items()]]
    main = recipe_main()
    results = main(args)
    written = json.loads((out / "eval_results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert set(written) == {"metrics", "protocol", "baselines", "timing"}
    for key in ["hit@1", "ndcg@5", "mrr@10", "hit@20", "valid_item_rate", "duplicate_rate", "coverage@10"]:
        assert key in written["metrics"]
    proto = written["protocol"]
    assert proto["model"] == "SASRec" and proto["users"] == 24 and proto["catalog_size"] == 30
    assert proto["seen_items"] == "excluded from ranking" and proto["epochs_trained"] == 3
    assert proto["sasrec"]["hidden"] == 16 and 1 <= proto["best_epoch"] <= 3
    assert proto["validation"]["ndcg@10"] == pytest.approx(proto["best_valid_ndcg10"], abs=1e-6)  # best weights kept
    assert written["timing"]["epochs"] == 3 and "popularity" in written["baselines"]

    split = load_split(load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy"]))
    rows = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    rankings = {r["user_id"]: [(split.catalog.by_id[i].index,) for i in r["items"]] for r in rows}
    assert len(rows) == 24 and all(len(r["items"]) == 20 for r in rows)
    assert score(rankings, split, split.eval_users, "test", [1, 5, 10, 20], seed=proto["seed"]) == written["metrics"]
    assert "snips_ndcg@10" in written["metrics"] and "snips_ndcg@10" in written["baselines"]["popularity"]
    assert [p.name for p in out.iterdir() if "tmp" in p.name] == []

    # reuse: same model, same numbers, no training
    again = main(args + ["sasrec.retrain=false"])
    assert again["metrics"] == results["metrics"] and again["timing"]["reused_checkpoint"] is True
    with pytest.raises(CheckpointError, match="sasrec.hidden: 16 there, 32 now"):
        main(args + ["sasrec.retrain=false", "sasrec.hidden=32"])

    assert cli_main(["results", str(out / "eval_results.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("most-popular-unseen") and lines[2].startswith("SASRec ")
    assert f"{results['metrics']['ndcg@10']:.4f}" in lines[2]
