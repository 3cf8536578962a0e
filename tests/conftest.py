"""Fixtures: a tiny byte-level BPE tokenizer with a chat template, a tiny random Llama
saved as an HF folder, and a synthetic RecBole-format dataset. Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

from tiny_fixtures import (  # noqa: E402,F401
    ARCHITECTURES,
    CHATML,
    GEMMA_CHAT,
    WORDS,
    build_tiny_model,
    build_tokenizer,
    toy_titles,
    write_toy_dataset,
)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy-data"))


@pytest.fixture()
def tiny_overrides(tiny_model_dir, toy_data_dir, tmp_path) -> list[str]:
    """Config overrides that point every recipe at the tiny model and toy data, writing into tmp_path."""
    return [
        f"run.output_dir={tmp_path / 'run'}",
        f"data.path={toy_data_dir}",
        "data.dataset=toy",
        "data.max_history=5",
        f"model.name_or_path={tiny_model_dir}",
        "model.dtype=float32",
        f"prompt.template={REPO / 'prompts' / 'next_item_title.yaml'}",
        "train.batch_size=4",
        "train.log_every=1",
        "train.eval_users=6",
        "decode.batch_users=4",
    ]


@pytest.fixture(scope="module")
def tiny_title_setup(tiny_model_dir, toy_data_dir):
    """(Setup, untuned tiny model in eval mode) for title identifiers on the toy data: a multi-level trie."""
    from genrec.config import load_config
    from genrec.model.loading import load_base_model
    from genrec.recommender import prepare

    cfg = load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy", "data.max_history=5",
                             f"model.name_or_path={tiny_model_dir}", "model.dtype=float32"])
    setup = prepare(cfg)
    return setup, load_base_model(cfg.model, setup.model_path).eval()


@pytest.fixture(scope="session")
def multiprocess_runs(tiny_model_dir, toy_data_dir, tmp_path_factory) -> tuple[Path, dict]:
    """Every recipe variant trained and evaluated by two real processes (torchrun, gloo), in one launch
    (tests/multiprocess_driver.py): (its output folder, its summary by variant)."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("multiprocess")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "multiprocess_driver.py"), "--out", str(out), "--model", str(tiny_model_dir),
           "--data", str(toy_data_dir)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and (out / "summary.json").is_file(), proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, json.loads((out / "summary.json").read_text())
