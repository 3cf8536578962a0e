"""Config: defaults, YAML file, dotted overrides, coercion and validation messages."""

from __future__ import annotations

import pytest

from genrec.config import Config, load_config, parse_cli, save_config
from genrec.errors import ConfigError


def test_defaults_load():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.run.seed == 42
    assert cfg.run.checkpoint is None
    assert cfg.data.dataset == "ml-100k"
    assert cfg.data.format == "atomic"
    assert cfg.data.max_history == 20
    assert cfg.train.lr == 2e-4
    assert cfg.decode.num_beams == 20
    assert cfg.eval.ks == [1, 5, 10, 20]
    assert cfg.adapter.target_modules[:2] == ["q_proj", "k_proj"]
    assert cfg.recommend.history is None


def test_defaults_are_not_shared_between_instances():
    a, b = load_config(), load_config()
    a.eval.ks.append(50)
    assert b.eval.ks == [1, 5, 10, 20]


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "run:\n  seed: 7\n  output_dir: runs/x\n"
        "train:\n  lr: 1e-4\n  batch_size: 4\n"
        "data:\n  k_core: 5\n"
    )
    cfg = load_config(path, ["train.batch_size=8", "run.seed=9"])
    assert cfg.run.seed == 9  # override wins over the file
    assert cfg.run.output_dir == "runs/x"
    # YAML 1.1 reads "1e-4" as a string: the coercion must still make it a float
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.batch_size == 8
    assert cfg.data.k_core == 5


@pytest.mark.parametrize(
    "override, section, key, expected",
    [
        ("train.lr=1e-4", "train", "lr", 1e-4),
        ("train.lr=3", "train", "lr", 3.0),
        ("train.epochs=2", "train", "epochs", 2.0),
        ("train.batch_size=32", "train", "batch_size", 32),
        ("train.batch_size=1e1", "train", "batch_size", 10),
        ("train.max_steps=100", "train", "max_steps", 100),
        ("train.max_steps=null", "train", "max_steps", None),
        ("train.max_steps=None", "train", "max_steps", None),
        ("run.checkpoint=null", "run", "checkpoint", None),
        ("run.checkpoint=base", "run", "checkpoint", "base"),
        ("run.resume=true", "run", "resume", True),
        ("run.resume=yes", "run", "resume", True),
        ("run.resume=false", "run", "resume", False),
        ("decode.exclude_seen=False", "decode", "exclude_seen", False),
        ("eval.ks=[1, 5]", "eval", "ks", [1, 5]),
        ("eval.ks=1,5,10", "eval", "ks", [1, 5, 10]),
        ("eval.users=null", "eval", "users", None),
        ("eval.users=100", "eval", "users", 100),
        ("adapter.target_modules=q_proj,v_proj", "adapter", "target_modules", ["q_proj", "v_proj"]),
        ("adapter.target_modules=[q_proj]", "adapter", "target_modules", ["q_proj"]),
        ("data.min_rating=4", "data", "min_rating", 4.0),
        ("data.rating_column=null", "data", "rating_column", None),
        ("items.id_format=id{item_id}", "items", "id_format", "id{item_id}"),
    ],
)
def test_override_coercion(override, section, key, expected):
    cfg = load_config(None, [override])
    value = getattr(getattr(cfg, section), key)
    assert value == expected
    if expected is not None:
        assert type(value) is type(expected)
        if isinstance(expected, list):
            assert [type(v) for v in value] == [type(v) for v in expected]


def test_string_field_keeps_numeric_looking_text_as_string():
    cfg = load_config(None, ["data.dataset=1995"])
    assert cfg.data.dataset == "1995"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.batch_size=2.5", "expects an integer"),
        ("train.batch_size=many", "expects an integer"),
        ("train.batch_size=true", "expects an integer"),
        ("train.lr=fast", "expects a number"),
        ("run.resume=maybe", "expects true/false"),
        ("run.seed=null", "may not be null"),
        ("eval.ks={a: 1}", "expects a list"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert fragment in msg
    assert override.split("=")[0] in msg
    assert "command line" in msg


def test_unknown_section_suggests_nearest():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trian.lr=1e-4"])
    msg = str(e.value)
    assert "unknown section 'trian'" in msg
    assert "did you mean 'train'" in msg


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lrr=1e-4"])
    msg = str(e.value)
    assert "unknown key 'train.lrr'" in msg
    assert "did you mean 'lr'" in msg


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("decode:\n  num_beam: 30\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "did you mean 'num_beams'" in msg


def test_key_without_section_is_rejected():
    with pytest.raises(ConfigError, match="is not a 'section.key' name"):
        load_config(None, ["lr=1e-4"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_bad_enum_lists_choices():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.quantization=3bit"])
    msg = str(e.value)
    assert "model.quantization" in msg
    assert "none, 4bit, 8bit" in msg
    assert "'3bit'" in msg


@pytest.mark.parametrize("override", ["data.format=xml", "eval.split=train", "adapter.method=lora2", "prompt.chat=maybe"])
def test_other_enums_are_checked(override):
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(None, [override])


def test_good_enum_values_pass():
    cfg = load_config(None, ["model.quantization=8bit", "adapter.method=ia3", "eval.split=valid", "prompt.chat=auto"])
    assert (cfg.model.quantization, cfg.adapter.method, cfg.eval.split, cfg.prompt.chat) == ("8bit", "ia3", "valid", "auto")
    assert load_config(None, ['prompt.chat="off"']).prompt.chat == "off"


@pytest.mark.parametrize("value", ["on", "off"])
def test_prompt_chat_on_off_unquoted(value, tmp_path):
    assert load_config(None, [f"prompt.chat={value}"]).prompt.chat == value
    path = tmp_path / "c.yaml"
    path.write_text(f"prompt:\n  chat: {value}\n")
    assert load_config(path).prompt.chat == value


def test_quantized_gguf_is_an_error():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.quantization=4bit", "model.name_or_path=x.gguf"])
    assert "gguf" in str(e.value)
    assert "4bit" in str(e.value)
    # each alone is fine
    assert load_config(None, ["model.name_or_path=x.gguf"]).model.name_or_path == "x.gguf"
    assert load_config(None, ["model.quantization=4bit"]).model.quantization == "4bit"


def test_num_beams_smaller_than_largest_k_is_an_error():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["decode.num_beams=10"])  # default eval.ks goes to 20
    assert "decode.num_beams=10" in str(e.value)
    cfg = load_config(None, ["decode.num_beams=10", "eval.ks=[1,5,10]"])
    assert cfg.decode.num_beams == 10


def test_num_beams_smaller_than_recommend_k_is_an_error():
    with pytest.raises(ConfigError, match="recommend.k=30"):
        load_config(None, ["recommend.k=30"])


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.grad_accum=0", "data.max_history=0", "decode.batch_users=-1"])
def test_positive_fields(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


def test_tabular_format_needs_interactions_file():
    with pytest.raises(ConfigError, match="data.interactions"):
        load_config(None, ["data.format=csv"])
    assert load_config(None, ["data.format=csv", "data.interactions=x.csv"]).data.interactions == "x.csv"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    flat = tmp_path / "flat.yaml"
    flat.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(flat)


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path).to_dict() == load_config().to_dict()


def test_save_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=1e-5", "eval.ks=[1,2]", "decode.num_beams=5", "recommend.k=3",
                             "run.checkpoint=base"])
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    assert load_config(path).to_dict() == cfg.to_dict()


def test_parse_cli_splits_config_and_overrides():
    assert parse_cli(["--config", "a.yaml", "train.lr=1e-4", "--data.k_core=5"]) == (
        "a.yaml", ["train.lr=1e-4", "data.k_core=5"])
    assert parse_cli(["--config=b.yaml", "run.seed=1"]) == ("b.yaml", ["run.seed=1"])
    assert parse_cli(["run.seed=1"]) == (None, ["run.seed=1"])
    assert parse_cli([]) == (None, [])
    # values may themselves contain '='
    assert parse_cli(["items.id_format=a=b"]) == (None, ["items.id_format=a=b"])


def test_parse_cli_errors():
    with pytest.raises(ConfigError, match="--config needs a path"):
        parse_cli(["--config"])
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        parse_cli(["stray"])


def test_recommend_history_pipe_string_becomes_list():
    cfg = load_config(None, ["recommend.history=A (1995)|B (1996)"])
    assert cfg.recommend.history == ["A (1995)", "B (1996)"]


def test_recommend_history_yaml_list(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("recommend:\n  history: ['A (1995)', 'B (1996)', 'C']\n  user_id: 7\n")
    cfg = load_config(path)
    assert cfg.recommend.history == ["A (1995)", "B (1996)", "C"]
    assert cfg.recommend.user_id == "7"


def test_recommend_history_titles_with_commas():
    cfg = load_config(None, ["recommend.history=American President, The (1995)|Toy Story (1995)"])
    assert cfg.recommend.history == ["American President, The (1995)", "Toy Story (1995)"]


def test_item_text_quoted_on_command_line():
    cfg = load_config(None, ['data.item_text="{movie_title} [{release_year}]"'])
    assert cfg.data.item_text == "{movie_title} [{release_year}]"


@pytest.mark.parametrize("value", ["{movie_title} ({release_year})", "{movie_title}"])
def test_item_text_unquoted_on_command_line(value):
    assert load_config(None, [f"data.item_text={value}"]).data.item_text == value


# ---- numeric bounds: every numeric key of every section ---------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("train.max_steps=0", "'train.max_steps' must be >= 1 or null, found 0"),
    ("train.epochs=-1", "'train.epochs' must be > 0, found -1.0"),
    ("train.epochs=0", "'train.epochs' must be > 0, found 0.0"),
    ("train.lr=-1", "'train.lr' must be >= 0, found -1.0"),
    ("train.lr=nan", "'train.lr' must be >= 0, found nan"),
    ("train.embedding_lr=-1e-3", "'train.embedding_lr' must be >= 0 or null, found -0.001"),
    ("train.warmup_ratio=1", "'train.warmup_ratio' must be in [0, 1), found 1.0"),
    ("train.warmup_ratio=-0.1", "'train.warmup_ratio' must be in [0, 1), found -0.1"),
    ("train.max_grad_norm=-1", "'train.max_grad_norm' must be >= 0, found -1.0"),
    ("train.weight_decay=-0.01", "'train.weight_decay' must be >= 0, found -0.01"),
    ("train.log_every=0", "'train.log_every' must be >= 1, found 0"),
    ("train.eval_every=-1", "'train.eval_every' must be >= 0, found -1"),
    ("train.save_every=-5", "'train.save_every' must be >= 0, found -5"),
    ("train.keep_checkpoints=-1", "'train.keep_checkpoints' must be >= 0, found -1"),
    ("train.max_length=1", "'train.max_length' must be >= 2, found 1"),
    ("train.halt_after_steps=0", "'train.halt_after_steps' must be >= 1 or null, found 0"),
    ("train.eval_users=0", "'train.eval_users' must be >= 1 or null, found 0"),
    ("train.dpo_beta=0", "'train.dpo_beta' must be > 0, found 0.0"),
    ("adapter.r=0", "'adapter.r' must be >= 1, found 0"),
    ("adapter.alpha=0", "'adapter.alpha' must be > 0, found 0"),
    ("adapter.dropout=1", "'adapter.dropout' must be in [0, 1), found 1.0"),
    ("decode.num_beams=0", "'decode.num_beams' must be >= 1, found 0"),
    ("decode.contrastive_lambda=-1", "'decode.contrastive_lambda' must be >= 0, found -1.0"),
    ("decode.length_penalty=inf", "'decode.length_penalty' must be a finite number, found inf"),
    ("eval.users=0", "'eval.users' must be >= 1 or null, found 0"),
    ("eval.ks=[0, 10]", "'eval.ks' must be >= 1, found 0"),
    ("eval.ks=[]", "'eval.ks' needs at least one value"),
    ("recommend.k=0", "'recommend.k' must be >= 1, found 0"),
    ("run.seed=-1", "'run.seed' must be between 0 and 4294967295, found -1"),
    ("data.k_core=-2", "'data.k_core' must be >= 0, found -2"),
    ("data.min_history=0", "'data.min_history' must be >= 1, found 0"),
    ("data.train_windows_per_user=0", "'data.train_windows_per_user' must be >= 1 or null, found 0"),
    ("items.semantic_levels=26", "'items.semantic_levels' must be between 1 and 25, found 26"),
    ("sasrec.lr=-1e-3", "'sasrec.lr' must be > 0, found -0.001"),
    ("explain.length_penalty=nan", "'explain.length_penalty' must be a finite number, found nan"),
])
def test_out_of_range_values_name_the_key_and_the_bound(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == f"config: {message}"


def test_every_numeric_key_has_a_bound():
    from genrec.config import BOUNDS, numeric_keys

    keys = numeric_keys()
    assert {"train.lr", "train.max_steps", "eval.ks", "adapter.r", "sasrec.lr", "run.seed"} <= set(keys)
    assert sorted(set(keys) - set(BOUNDS)) == []  # a new numeric key needs its range in config.BOUNDS
    assert sorted(set(BOUNDS) - set(keys)) == []


def test_bounds_admit_the_edges_and_null():
    cfg = load_config(None, ["train.max_steps=1", "train.max_steps=null", "train.warmup_ratio=0",
                             "adapter.dropout=0", "train.max_grad_norm=0", "train.keep_checkpoints=0",
                             "train.max_length=2", "decode.popularity_gamma=-0.5", "train.epochs=0.5",
                             "train.lr=0", "train.embedding_lr=0"])
    assert cfg.train.max_steps is None and cfg.train.warmup_ratio == 0.0 and cfg.decode.popularity_gamma == -0.5
    assert load_config(None, ["train.max_steps=1"]).train.max_steps == 1


def test_bounds_apply_to_yaml_files_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 0\n")
    with pytest.raises(ConfigError, match="'train.max_steps' must be >= 1 or null, found 0"):
        load_config(path)


def test_shipped_recipe_configs_are_within_bounds():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").rglob("*.yaml"))
    assert len(configs) >= 15
    for path in configs:
        load_config(path)


# ---- names other tools use ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override, hint", [
    ("train.lerning_rate=1e-3", "did you mean 'lr'?"),  # a near-miss of an alias
    ("train.learning_rate=1e-3", "did you mean 'lr'?"),
    ("train.lr_scheduler=linear", "did you mean 'scheduler'?"),
    ("train.num_epochs=2", "did you mean 'epochs'?"),
    ("train.num_train_epocs=2", "did you mean 'epochs'?"),
    ("train.gradient_accumulation_steps=4", "did you mean 'grad_accum'?"),
    ("train.per_device_train_batch_size=4", "did you mean 'batch_size'?"),
    ("train.lora_r=8", "did you mean 'adapter.r'?"),
    ("adapter.lora_r=8", "did you mean 'r'?"),
    ("adapter.lora_alpha=8", "did you mean 'alpha'?"),
    ("train.seed=1", "did you mean 'run.seed'?"),  # a key of another section
    ("train.lrr=1", "did you mean 'lr'?"),
    ("decode.num_beam=4", "did you mean 'num_beams'?"),
])
def test_alias_names_suggest_the_genrec_key(override, hint):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"unknown key '{override.split('=')[0]}' ({hint})" in msg


def test_aliases_are_suggested_not_accepted(tmp_path):
    from genrec.config import ALIASES

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rate' \(did you mean 'lr'\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'learning_rate' is not a 'section.key' name \(did you mean 'train.lr'\?\)"):
        load_config(None, ["learning_rate=1e-3"])
    with pytest.raises(ConfigError, match=r"unknown section 'lora' \(did you mean 'adapter'\?\)"):
        load_config(None, ["lora.r=8"])
    cfg = Config()
    for alias, target in ALIASES.items():  # every alias points at a real key, and no alias is a key
        sec, key = target.split(".")
        assert hasattr(getattr(cfg, sec), key), target
        assert not any(hasattr(getattr(cfg, s), alias) for s in vars(cfg)), alias
