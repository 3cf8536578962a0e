"""The `genrec` command: prompt validation/rendering with loss marks, data summary, results table."""

from __future__ import annotations

import json
from pathlib import Path

from genrec.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_validate_shipped_templates(capsys):
    files = sorted(str(p) for p in (REPO / "prompts").glob("*.yaml"))
    assert main(["prompts", "validate", *files]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(files) >= 2


def test_validate_reports_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nprompt: |\n  line one\n  {{ histroy }}\ncompletion: \"{{ target }}\"\n")
    assert main(["prompts", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4" in err and "histroy" in err


def test_render_marks_the_loss_tokens(tiny_overrides, capsys):
    config = str(REPO / "recipes" / "configs" / "ml100k" / "smollm2_lora.yaml")
    assert main(["prompts", "render", "--config", config, "--n", "2", *tiny_overrides]) == 0
    out = capsys.readouterr().out
    assert out.count("===== example") == 2
    assert "<|im_start|>assistant" in out and "Which movie will they watch next?" in out
    marked = out.split("\u00bb", 1)[1].split("\u00ab", 1)[0]
    assert marked.endswith("<|im_end|>") and "(" in marked  # a title with its year, then the end token
    assert " with loss =====" in out


def test_render_marks_every_item_after_the_first_under_the_sequence_objective(tiny_overrides, capsys):
    config = str(REPO / "recipes" / "configs" / "ml100k" / "smollm2_atomic.yaml")
    overrides = [o for o in tiny_overrides if not o.startswith(("prompt.template=", "data.max_history="))]
    assert main(["prompts", "render", "--config", config, "--n", "1", *overrides, "data.max_history=5",
                 f"prompt.template={REPO / 'prompts' / 'next_item_atomic.yaml'}"]) == 0
    out = capsys.readouterr().out
    body = out.split("=====\n", 1)[1].split("\nloss on:", 1)[0]
    marked = [piece.split("\u00ab", 1)[0] for piece in body.split("\u00bb")[1:]]
    assert body.startswith("Movies this user watched, oldest first:<item_")  # the first item: context only
    assert len(marked) == 1 and marked[0].count("<item_") == body.count("<item_") - 1  # all the others: loss


def test_render_marks_every_code_of_every_item_after_the_first_with_semantic_ids(tiny_overrides, capsys):
    config = str(REPO / "recipes" / "configs" / "ml100k" / "smollm2_semantic.yaml")
    overrides = [o for o in tiny_overrides if not o.startswith(("prompt.template=", "data.max_history="))]
    assert main(["prompts", "render", "--config", config, "--n", "1", *overrides, "data.max_history=5",
                 "items.semantic_source=llm", "items.semantic_text=null", "items.semantic_codebook=4",
                 "items.semantic_levels=2", f"prompt.template={REPO / 'prompts' / 'next_item_semantic.yaml'}"]) == 0
    out = capsys.readouterr().out
    body = out.split("=====\n", 1)[1].split("\nloss on:", 1)[0]
    marked = [piece.split("\u00ab", 1)[0] for piece in body.split("\u00bb")[1:]]
    assert body.startswith("Movies this user watched, oldest first:<a_")
    items = body.count("<a_")
    assert items >= 2 and body.count("<b_") == body.count("<c_") == items  # 2 levels + the collision rank
    assert len(marked) == 1 and marked[0].count("<a_") == items - 1 and marked[0].count("<c_") == items - 1


def test_data_summary(tiny_overrides, capsys):
    config = str(REPO / "recipes" / "configs" / "ml100k" / "smollm2_lora.yaml")
    assert main(["data", "--config", config, *tiny_overrides]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 24 and stats["items"] == 30 and stats["eval_users"] == 24
    assert stats["train_windows"] > 0


def test_results_table(tmp_path, capsys):
    metrics = {k: 0.1 for k in ["hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20", "valid_item_rate",
                                "duplicate_rate", "coverage@10"]}
    base = {"metrics": metrics, "protocol": {"users": 100, "adapter": None},
            "baselines": {"popularity": {**metrics, "ndcg@10": 0.05}}}
    tuned = {"metrics": {**metrics, "ndcg@10": 0.25}, "protocol": {"users": 943, "adapter": "runs/demo/tuned/adapter"},
             "baselines": {"popularity": metrics}}
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(tuned))
    assert main(["results", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("most-popular-unseen") and " 100" in lines[1] and "0.0500" in lines[1]
    assert lines[2].startswith("most-popular-unseen") and " 943" in lines[2]
    assert lines[3].startswith("untuned base model")
    assert lines[4].startswith("tuned model") and "0.2500" in lines[4] and " 943" in lines[4]
