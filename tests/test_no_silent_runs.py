"""No silent wrong runs: bad settings, data and templates stop a recipe with one `genrec: error:` line and
exit 2 before any weights load or anything is written (in-process, tiny model and toy data)."""

from __future__ import annotations

import shutil

import pytest
from helpers_recipes import load_recipe

import genrec.model.loading
import genrec.recommender
from genrec.runtime import run


@pytest.fixture()
def no_weights(monkeypatch):
    """Fail the test if a recipe gets as far as loading base-model weights."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(genrec.recommender, "load_base_model", refuse)
    monkeypatch.setattr(genrec.model.loading, "load_base_model", refuse)


def fails(recipe: str, argv: list[str], capsys) -> str:
    assert run(load_recipe(recipe).main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrec: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=0", "config: 'train.max_steps' must be >= 1 or null, found 0"),
    ("train.epochs=-1", "config: 'train.epochs' must be > 0, found -1.0"),
    ("train.lr=-1", "config: 'train.lr' must be >= 0, found -1.0"),
    ("train.lerning_rate=1e-3", "unknown key 'train.lerning_rate' (did you mean 'lr'?)"),
])
def test_finetune_refuses_bad_settings(tiny_overrides, tmp_path, capsys, no_weights, override, message):
    err = fails("finetune", tiny_overrides + [override], capsys)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_finetune_refuses_a_template_that_raises_before_weights_load(tiny_overrides, tmp_path, capsys, no_weights):
    template = tmp_path / "bad.yaml"
    template.write_text("name: bad\nprompt: |\n  Watched:\n  {{ history | join(', ') }} {{ 1 / 0 }}\n"
                        "completion: \"{{ target }}\"\n")
    err = fails("finetune", tiny_overrides + [f"prompt.template={template}"], capsys)
    assert f"{template}:4: in 'prompt': rendering failed: ZeroDivisionError: division by zero" in err
    assert not (tmp_path / "run").exists()


def test_finetune_refuses_items_without_text(tiny_overrides, toy_data_dir, tmp_path, capsys, no_weights):
    data = tmp_path / "data"
    shutil.copytree(toy_data_dir, data)
    item_file = data / "toy.item"
    lines = item_file.read_text().splitlines(keepends=True)
    item_file.write_text("".join(line for line in lines if not line.startswith(("7\t", "12\t"))))
    err = fails("finetune", tiny_overrides + [f"data.path={data}"], capsys)
    assert "2 of 30 items have no text for data.item_text '{movie_title} ({release_year})'" in err
    assert "first ids: 7, 12" in err and "data.missing_item_text=placeholder" in err
    assert not (tmp_path / "run").exists()


def test_recommend_reports_every_unknown_title_before_weights_load(tiny_overrides, tmp_path, capsys, no_weights):
    argv = tiny_overrides + ["run.checkpoint=base", f"run.output_dir={tmp_path / 'rec'}",
                             "recommend.history=Love Blu (1957)|City (1971)|Dark Kng"]
    err = fails("recommend", argv, capsys)
    assert "recommend.history: 2 of 3 items are unknown" in err
    assert "'Love Blu (1957)'; close matches: 'Love Blue (1957)'" in err and "'Dark Kng'" in err
    assert not (tmp_path / "rec").exists()

