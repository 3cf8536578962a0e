"""Prompt templates: loading, checks, error locations, sandboxing, and the formatter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers_tokenizer import SIMPLE_CHAT_TEMPLATE, build_word_tokenizer

from genrec.data.catalog import Catalog, Item
from genrec.data.splits import Example
from genrec.errors import TemplateError
from genrec.prompts.template import PromptFormatter, PromptTemplate, RenderedExample

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "prompts").glob("*.yaml"))
TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Alien (1979)"]


@pytest.fixture()
def catalog():
    return Catalog([Item(index=i, item_id=str(i + 1), text=t, plain_id=f"item_{i + 1}", fields={"n": i})
                    for i, t in enumerate(TITLES)])


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_word_tokenizer(TITLES + ["Movies this user watched, oldest first: Which movie will they watch next?"])


@pytest.fixture(scope="module")
def chat_tokenizer():
    return build_word_tokenizer(TITLES, chat_template=SIMPLE_CHAT_TEMPLATE)


def write(tmp_path, text, name="t.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    """1-based file line of the (single) line containing needle."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, hits
    return hits[0]


def test_shipped_templates_exist():
    names = {p.name for p in SHIPPED}
    assert {"next_item_title.yaml", "next_item_id.yaml", "next_item_id_with_titles.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("identifier", ["title", "id", "atomic", "semantic"])
def test_shipped_templates_load_and_check(path, identifier, catalog):
    if identifier == "semantic":
        catalog = catalog.with_semantic([f"<a_{i % 2}><b_{i}>" for i in range(len(catalog))])
    t = PromptTemplate.load(path)
    assert t.name == path.stem
    assert t.source == str(path)
    t.check(catalog, identifier)
    item = catalog[2]
    if t.answers:  # pointwise: the completion is the answer
        assert [t.render_answer(a) for a in t.answers] == list(t.answers)
    else:
        assert t.render_completion(item, identifier) == item.identifier(identifier)
    if path.name not in ("next_item_atomic.yaml", "next_item_semantic.yaml", "next_item_title_sequence.yaml",
                         "reason_then_recommend.yaml", "next_item_atomic_multitask.yaml",
                         "recommend_then_explain.yaml", "next_item_atomic_products.yaml",
                         "explain_line.yaml"):  # prompt.chat=off
        assert t.render_system()  # every chat template ships a system prompt
    prompt = t.render_prompt(Example("u", (0, 1), 2), catalog, identifier)
    assert not prompt.startswith("\n") and not prompt.endswith("\n")


def test_next_item_title_renders_exactly(catalog):
    t = PromptTemplate.load(REPO / "prompts" / "next_item_title.yaml")
    prompt = t.render_prompt(Example("u", (0, 1), 2), catalog, "title")
    assert prompt == (
        "Movies this user watched, oldest first:\nToy Story (1995)\nHeat (1995)\nWhich movie will they watch next?"
    )
    assert t.render_system() == "You recommend movies."


def test_next_item_id_renders_exactly(catalog):
    t = PromptTemplate.load(REPO / "prompts" / "next_item_id.yaml")
    prompt = t.render_prompt(Example("u", (3, 0), 1), catalog, "id")
    assert prompt == "Items this user interacted with, oldest first: item_4, item_1\nWhich item comes next?"
    assert t.render_completion(catalog[1], "id") == "item_2"


def test_next_item_id_with_titles_renders_exactly(catalog):
    t = PromptTemplate.load(REPO / "prompts" / "next_item_id_with_titles.yaml")
    prompt = t.render_prompt(Example("u", (0, 2), 1), catalog, "id")
    assert prompt == ("Movies this user watched, oldest first:\nitem_1: Toy Story (1995)\nitem_3: Fargo (1996)\n"
                      "Which movie will they watch next? Answer with its id.")


def test_all_variables_are_available(catalog):
    text = (
        "name: v\n"
        "prompt: '{{ user_id }}|{{ history | join(\",\") }}|{{ history_items | map(attribute=\"item_id\") | join(\",\") }}"
        "|{{ target }}|{{ target_item.plain_id }}|{{ history_items[0].fields.n }}'\n"
        "completion: '{{ target_item.text }}'\n"
    )
    t = PromptTemplate("v.yaml", text)
    prompt = t.render_prompt(Example("u7", (0, 1), 3), catalog, "title")
    assert prompt == "u7|Toy Story (1995),Heat (1995)|1,2|Alien (1979)|item_4|0"
    assert t.render_completion(catalog[3], "id", user_id="u7") == "Alien (1979)"
    assert t.render_system() is None  # no system key


def test_missing_template_file(tmp_path):
    with pytest.raises(TemplateError, match="prompt template not found"):
        PromptTemplate.load(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- error locations

UNDEFINED = """\
# a template with a mistake on one line
name: broken
description: uses a variable that does not exist
system: You recommend movies.
prompt: |
  Movies this user watched:
  {% for title in history %}
  {{ title }}
  {% endfor %}
  Favourite genre: {{ favourite_genre }}
  Which movie next?
completion: "{{ target }}"
"""


def test_undefined_variable_names_file_and_variable(tmp_path, catalog):
    path = write(tmp_path, UNDEFINED)
    t = PromptTemplate.load(path)  # undefined names only surface at render time
    with pytest.raises(TemplateError) as e:
        t.check(catalog, "title")
    msg = str(e.value)
    assert msg.startswith(str(path))
    assert "'favourite_genre' is undefined" in msg
    assert "in 'prompt'" in msg
    assert "available variables: history, history_items, history_ratings, target, target_item, user_id" in msg


def test_undefined_variable_reports_file_line(tmp_path, catalog):
    path = write(tmp_path, UNDEFINED)
    expected = line_of(UNDEFINED, "favourite_genre }}")
    assert expected == 10
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(path).check(catalog, "title")
    assert str(e.value).startswith(f"{path}:{expected}: ")


def test_undefined_variable_in_plain_scalar_completion_reports_file_line(tmp_path, catalog):
    text = "name: c\nprompt: |\n  {{ history | join(', ') }}\ncompletion: \"{{ target }} {{ rating }}\"\n"
    path = write(tmp_path, text)
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(path).check(catalog, "title")
    assert str(e.value).startswith(f"{path}:{line_of(text, 'rating')}: in 'completion'")


def test_syntax_error_reports_file_line_in_block_scalar(tmp_path):
    text = (
        "name: s\n"
        "# comment line\n"
        "prompt: |\n"
        "  Movies:\n"
        "  {% for t in history %}{{ t }}{% endfor %}\n"
        "  Broken: {{ history | }}\n"
        "  Next?\n"
        "completion: \"{{ target }}\"\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(path)
    expected = line_of(text, "Broken:")
    assert expected == 6
    assert str(e.value).startswith(f"{path}:{expected}: in 'prompt': ")


def test_syntax_error_reports_file_line_with_strip_chomping(tmp_path):
    text = "name: s\nsystem: hi\nprompt: |-\n  ok\n  ok\n  {% if %}\ncompletion: \"{{ target }}\"\n"
    path = write(tmp_path, text)
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(path)
    assert str(e.value).startswith(f"{path}:{line_of(text, '{% if %}')}: in 'prompt'")


def test_syntax_error_reports_file_line_in_plain_scalar(tmp_path):
    text = "name: s\nprompt: |\n  {{ history }}\n\ncompletion: \"{{ target \"\n"
    path = write(tmp_path, text)
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(path)
    assert str(e.value).startswith(f"{path}:{line_of(text, 'completion:')}: in 'completion'")


def test_unclosed_block_is_a_template_error(tmp_path):
    text = "name: s\nprompt: |\n  {% for t in history %}\n  {{ t }}\ncompletion: \"{{ target }}\"\n"
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(write(tmp_path, text))
    assert "in 'prompt'" in str(e.value) and "endfor" in str(e.value)


def test_unknown_top_level_key_suggests_nearest(tmp_path):
    text = "name: k\nprompt: |\n  {{ history }}\ncompletoin: \"{{ target }}\"\n"
    path = write(tmp_path, text)
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line_of(text, 'completoin')}: unknown key 'completoin'")
    assert "did you mean 'completion'" in msg
    assert "known keys: name, description, system, prompt, completion" in msg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: x\nprompt: hi\n", "key 'completion' is required"),
        ("name: x\nprompt: '   '\ncompletion: '{{ target }}'\n", "key 'prompt' is required"),
        ("name: x\nprompt: [1, 2]\ncompletion: '{{ target }}'\n", "key 'prompt' is required"),
        ("- a\n- b\n", "a template is a YAML mapping"),
        ("name: x\nprompt: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_templates(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(TemplateError) as e:
        PromptTemplate.load(path)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------- semantic checks


@pytest.mark.parametrize("completion", ["'the answer'", "'{{ user_id }}'", "'{{ history | length }}'"])
def test_completion_that_ignores_the_target_is_rejected(tmp_path, catalog, completion):
    path = write(tmp_path, f"name: c\nprompt: '{{{{ history }}}}'\ncompletion: {completion}\n")
    t = PromptTemplate.load(path)
    with pytest.raises(TemplateError) as e:
        t.check(catalog, "title")
    assert "renders the same text for different items" in str(e.value)
    assert str(path) in str(e.value)


def test_completion_using_target_item_passes_check(tmp_path, catalog):
    t = PromptTemplate.load(write(tmp_path, "name: c\nprompt: x\ncompletion: '#{{ target_item.item_id }}'\n"))
    t.check(catalog, "title")
    assert t.render_completion(catalog[0], "title") == "#1"


@pytest.mark.parametrize(
    "expr",
    [
        "{{ history.__class__.__mro__ }}",
        "{{ target_item.__init__.__globals__ }}",
        "{{ history_items[0].__dict__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ '{0.__class__.__mro__}'.format(history) }}",
        "{{ lipsum.__globals__ }}",
    ],
)
def test_sandbox_blocks_dunder_access(tmp_path, catalog, expr):
    text = "name: s\nprompt: \"" + expr.replace('"', '\\"') + "\"\ncompletion: '{{ target }}'\n"
    t = PromptTemplate.load(write(tmp_path, text))
    with pytest.raises(TemplateError) as e:
        t.check(catalog, "title")
    msg = str(e.value)
    assert "unsafe" in msg
    assert "<class" not in msg and "object>" not in msg  # nothing from the object graph leaks into the message


def test_templates_cannot_mutate_the_catalog(tmp_path, catalog):
    t = PromptTemplate.load(write(tmp_path, "name: m\nprompt: x\ncompletion: '{{ target_item.fields.clear() }}{{ target }}'\n"))
    try:
        t.render_completion(catalog[0], "title")
    except TemplateError:
        pass
    assert catalog[0].fields == {"n": 0}


def test_sha256_tracks_text():
    a = "name: a\nprompt: x\ncompletion: '{{ target }}'\n"
    b = a.replace("prompt: x", "prompt: y")
    ta, ta2, tb = PromptTemplate("a", a), PromptTemplate("other-source", a), PromptTemplate("a", b)
    assert ta.sha256 == hashlib.sha256(a.encode("utf-8")).hexdigest()
    assert ta.sha256 == ta2.sha256  # depends on the text only
    assert ta.sha256 != tb.sha256
    assert len(ta.sha256) == 64


# --------------------------------------------------------------------------- formatter


@pytest.fixture()
def title_template():
    return PromptTemplate.load(REPO / "prompts" / "next_item_title.yaml")


def test_formatter_without_chat_template(word_tokenizer, title_template, catalog):
    assert not getattr(word_tokenizer, "chat_template", None)
    ex = Example("u", (0, 1), 3)
    for chat in ("auto", "off"):
        f = PromptFormatter(title_template, word_tokenizer, catalog, "title", chat=chat)
        assert f.use_chat is False
        body = title_template.render_prompt(ex, catalog, "title")
        assert f.prompt(ex) == body + "\n"
        assert f.render(ex) == RenderedExample(body + "\n", "Alien (1979)")
    with pytest.raises(TemplateError, match="prompt.chat=on but the tokenizer has no chat template"):
        PromptFormatter(title_template, word_tokenizer, catalog, "title", chat="on")


def test_formatter_with_chat_template(chat_tokenizer, title_template, catalog):
    ex = Example("u", (2,), 0)
    for chat in ("auto", "on"):
        f = PromptFormatter(title_template, chat_tokenizer, catalog, "title", chat=chat)
        assert f.use_chat is True
        assert f.prompt(ex) == (
            "<|system|>\nYou recommend movies.<|end|>\n"
            "<|user|>\nMovies this user watched, oldest first:\nFargo (1996)\nWhich movie will they watch next?<|end|>\n"
            "<|assistant|>\n"
        )
        rendered = f.render(ex)
        assert rendered.completion == "Toy Story (1995)"
        assert rendered.prompt == f.prompt(ex)
    off = PromptFormatter(title_template, chat_tokenizer, catalog, "title", chat="off")
    assert off.use_chat is False
    assert off.prompt(ex).startswith("Movies this user watched")


def test_formatter_chat_without_system(chat_tokenizer, catalog):
    t = PromptTemplate("n.yaml", "name: n\nprompt: 'H: {{ history | join(\";\") }}'\ncompletion: '{{ target }}'\n")
    f = PromptFormatter(t, chat_tokenizer, catalog, "id")
    assert f.prompt(Example("u", (0, 1), 2)) == "<|user|>\nH: item_1;item_2<|end|>\n<|assistant|>\n"
    assert f.render(Example("u", (0, 1), 2)).completion == "item_3"


def test_word_tokenizer_round_trip(word_tokenizer):
    ids = word_tokenizer("Toy Story (1995)", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    assert word_tokenizer.eos_token == "</s>" and word_tokenizer.pad_token == "<pad>"
    assert word_tokenizer.eos_token_id != word_tokenizer.pad_token_id


# ---- render-time failures and resource limits ---------------------------------------------------------------

RAISING = [
    ("prompt", "{{ 1/0 }}", "rendering failed: ZeroDivisionError: division by zero"),
    ("prompt", "{% for i in range(10**9) %}.{% endfor %}", "exceeds the size limit"),
    ("prompt", "{% for i in range(20000) %}.{% endfor %}", "range of 20,000 items exceeds the limit of 10,000"),
    ("prompt", "{{ 'ab' * 10**9 }}", "str repetition of 2,000,000,000 items exceeds the limit of 1,000,000"),
    ("prompt", "{{ history * 10**8 }}", "list repetition of 200,000,000 items exceeds the limit"),  # 2 items
    ("prompt", "{{ 'x' | center(10**9) }}", "argument 1,000,000,000 exceeds the size limit"),
    ("prompt", "{{ 'x'.ljust(10**9) }}", "argument 1,000,000,000 exceeds the size limit"),
    ("prompt", "{{ 7 ** (10**9) }}", "exceeds the integer size limit"),
    ("prompt", "{% for i in range(2000) %}{% for j in range(2000) %}xxx{% endfor %}{% endfor %}",
     "output exceeds the limit of 1,000,000 characters"),
    ("completion", "{{ target }}{{ (target | length) // 0 }}", "rendering failed: ZeroDivisionError"),
    ("system", "{{ {}.missing.deeper }}", "in 'system'"),
]


@pytest.mark.parametrize("key, expr, fragment", RAISING, ids=[f"{k}:{e[:20]}" for k, e, _ in RAISING])
def test_render_time_failures_are_template_errors_with_file_line_and_key(tmp_path, catalog, key, expr, fragment):
    parts = {"system": "You recommend.", "prompt": "Watched:\n{{ history | join(', ') }}", "completion": "{{ target }}"}
    parts[key] = (parts[key] + "\n" + expr) if key != "completion" else expr
    text = "name: r\n" + "".join(f"{k}: |\n" + "".join(f"  {line}\n" for line in v.splitlines())
                                   for k, v in parts.items())
    path = write(tmp_path, text)
    template = PromptTemplate.load(path)  # compiles: these fail only when rendered
    with pytest.raises(TemplateError) as e:
        template.check(catalog, "title")  # the check every recipe runs before weights load
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line_of(text, expr)}: in '{key}': "), msg
    assert fragment in msg


def test_limits_leave_ordinary_templates_alone(tmp_path, catalog):
    text = ("name: ok\nprompt: |\n  {% for i in range(history | length) %}{{ loop.index }}. {{ history[i] }}\n"
            "  {% endfor %}{{ '-' * 10 }} {{ 2 ** 10 }} {{ 'x' | center(5) }}\ncompletion: \"{{ target }}\"\n")
    t = PromptTemplate.load(write(tmp_path, text))
    t.check(catalog, "title")
    example = Example("u", (0, 1), 2)
    assert t.render_prompt(example, catalog, "title") == \
        "1. Toy Story (1995)\n2. Heat (1995)\n---------- 1024   x  "
