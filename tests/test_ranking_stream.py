"""recipes/evaluate.py streams rankings to disk batch by batch and a killed evaluation resumes from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_recipes import KilledForTest, killed_at_call, load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def eval_args(tiny_overrides):
    # 12 users in batches of 4 (ordered by prompt length): three batches
    return [*tiny_overrides, "run.checkpoint=base", "eval.users=12", "decode.batch_users=4", "eval.ks=[5,10]"]


def partials(out: Path) -> list[Path]:
    return sorted(out.glob("rankings.partial-*.jsonl"))


def test_a_killed_evaluation_leaves_its_finished_batches_and_resumes_from_them(eval_args, tmp_path, monkeypatch):
    from genrec.recommender import Recommender

    evaluate = load_recipe("evaluate")
    out = tmp_path / "run"
    whole = evaluate.main(eval_args)
    expected = (out / "rankings.jsonl").read_text()
    assert whole["timing"]["resumed"] == 0 and not partials(out)  # the partial file goes once the whole one exists
    (out / "rankings.jsonl").unlink()
    (out / "eval_results.json").unlink()

    # killed during its third batch: the first two are on disk, nothing final is written
    with pytest.raises(KilledForTest), killed_at_call(Recommender, "rank", 3):
        evaluate.main(eval_args)
    [partial] = partials(out)
    lines = partial.read_text().splitlines()
    assert "fingerprint" in json.loads(lines[0]) and len(lines) == 1 + 8
    assert not (out / "rankings.jsonl").exists() and not (out / "eval_results.json").exists()
    with partial.open("a") as f:
        f.write('{"case_id": "cut short by the kil')  # a line a kill cut in half is ranked again, not trusted

    ranked, rank = [], Recommender.rank
    monkeypatch.setattr(Recommender, "rank", lambda self, examples, *a, **kw: ranked.append(len(examples))
                        or rank(self, examples, *a, **kw))
    resumed = evaluate.main(eval_args)
    assert resumed["timing"]["resumed"] == 8 and ranked == [4]  # only the missing batch was ranked
    assert (out / "rankings.jsonl").read_text() == expected
    assert resumed["metrics"] == whole["metrics"]
    assert not partials(out)


def test_partial_rankings_of_another_run_are_not_used(eval_args, tmp_path):
    evaluate = load_recipe("evaluate")
    out = tmp_path / "run"
    whole = evaluate.main(eval_args)
    planted = json.loads((out / "rankings.jsonl").read_text().splitlines()[0])
    # a partial file of the same run claims user 0's list is [0, 1, ...]: a resumed run takes it from disk
    header = {"fingerprint": fingerprint_of(out, eval_args)}
    fake = {"case_id": planted["user_id"], "items": list(range(10)), "scores": [0.0] * 10}
    (out / "rankings.partial-0.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(fake) + "\n")
    taken = evaluate.main(eval_args)
    first = json.loads((out / "rankings.jsonl").read_text().splitlines()[0])
    assert taken["timing"]["resumed"] == 1 and first["scores"] == [0.0] * 10 and first["items"] != planted["items"]
    # the same lines under another run's fingerprint are ignored
    (out / "rankings.partial-0.jsonl").write_text(json.dumps({"fingerprint": "another run"}) + "\n"
                                                  + json.dumps(fake) + "\n")
    again = evaluate.main(eval_args)
    assert again["timing"]["resumed"] == 0 and again["metrics"] == whole["metrics"]
    assert json.loads((out / "rankings.jsonl").read_text().splitlines()[0])["items"] == planted["items"]


def fingerprint_of(out: Path, args: list[str]) -> str:
    """The fingerprint a run with ``args`` writes: read from the partial file of a run killed at once."""
    from genrec.recommender import Recommender

    with pytest.raises(KilledForTest), killed_at_call(Recommender, "rank", 1):
        load_recipe("evaluate").main(args)
    [partial] = partials(out)
    fingerprint = json.loads(partial.read_text().splitlines()[0])["fingerprint"]
    partial.unlink()
    return fingerprint
