"""Prompt templates: YAML files with Jinja2 fields, rendered in a sandbox.

A template file has these keys::

    name: next_item_title            # required
    description: ...                 # optional
    system: You are a recommender.   # optional; chat models only
    prompt: |                        # required; Jinja2
      {% for item in history %}- {{ item }}
      {% endfor %}Next:
    completion: "{{ target }}"       # required; Jinja2; what the model learns to generate
    rationale: "why: {{ rationale }}"  # optional; one line written before the completion (reason-then-recommend)
    explanation: " Why: {{ explanation }}"  # optional; one line written after the completion (explained recommendations)
    answers: ["Yes", "No"]           # optional; makes the template pointwise (see below)
    tasks:                           # optional; prompts of self-supervised tasks (genrec.paradigms.multitask)
      masked_item: "{% for item in history %}{{ '[?]' if loop.index0 == masked else item }}{% endfor %} Hidden:"
      item_from_text: "The movie {{ target_item.text }} is"

A pointwise template (TALLRec style) asks about one candidate item: its prompt shows the
candidate (``target``/``target_item``), ``answers`` lists the positive answer then the negative
one, and the completion renders ``answer`` (one of them). The model is trained on the answer
and scored by p(first token of the positive answer) against p(the negative's) (genrec.paradigms.pointwise).

Variables: ``history`` (identifier strings, oldest first), ``history_items``
(items with ``.text``, ``.plain_id``, ``.item_id``, ``.fields``), ``target`` (the
target's identifier string), ``target_item``, ``user_id``, ``history_ratings`` (the user's rating of
each history item, None where unknown); in ``rationale`` also ``rationale`` (the text
``genrec.causal.rationale`` builds from the history; the model learns to write the rendered line, then a
newline, then the completion, and at inference writes it freely before the item is decoded under
the trie); in ``explanation`` also ``explanation`` (the text genrec.explain.statements writes from the
evidence for the target; the model learns the rendered line and a newline after the item, and at
inference writes it after the item it recommended). Undefined variables are
errors that name the file and line. The completion rendered for every catalog
item is what constrained decoding allows, so it must depend on the target.
"""

from __future__ import annotations

import functools
import hashlib
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from genrec.data.catalog import Catalog, Item
from genrec.data.splits import Example
from genrec.errors import TemplateError, suggest

KNOWN_KEYS = ("name", "description", "system", "prompt", "completion", "rationale", "explanation", "answers", "tasks")
TASK_KEYS = ("masked_item", "item_from_text")  # the self-supervised tasks of genrec.paradigms.multitask
LINE_KEYS = ("rationale", "explanation")  # one-line parts the model writes around the completion
REQUIRED_KEYS = ("name", "prompt", "completion")
# Resource limits of rendering: a template is user input, so it may not hang or exhaust memory.
MAX_RANGE = 10_000  # items a range() in a template may have (histories are at most data.max_history long)
MAX_OUTPUT = 1_000_000  # characters one rendered template key may produce
MAX_INT_BITS = 4_096  # ** may not make integers larger than this


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (templates may read the catalog, never change it) with size limits on
    ranges, sequence repetition (``'x' * n``), powers and size arguments of calls (``'x'.center(n)``)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                    raise SecurityError(
                        f"{type(seq).__name__} repetition of {len(seq) * n:,} items exceeds the limit of {MAX_OUTPUT:,}")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and \
                abs(left) > 1 and right * max(abs(left), 2).bit_length() > MAX_INT_BITS:
            raise SecurityError(f"{left} ** {right} exceeds the integer size limit ({MAX_INT_BITS} bits)")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        _check_sizes(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _check_sizes(args, kwargs) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT:
            raise SecurityError(f"argument {value:,} exceeds the size limit of {MAX_OUTPUT:,}")


def _limited_filter(f):
    """A filter whose arguments after the filtered value are size-checked (``'x' | center(10**9)``)."""
    @functools.wraps(f)  # keeps jinja's pass_context/pass_environment marks
    def limited(*args, **kwargs):
        marked = getattr(f, "jinja_pass_arg", None) is not None  # then args[0] is the context/environment
        _check_sizes(args[2 if marked else 1:], kwargs)
        return f(*args, **kwargs)
    return limited


def _limited_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range of {len(rng):,} items exceeds the limit of {MAX_RANGE:,}")
    return rng


_ENV = _LimitedSandbox(
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, autoescape=False
)
_ENV.globals["range"] = _limited_range
_ENV.filters = {name: _limited_filter(f) for name, f in _ENV.filters.items()}


@dataclass
class RenderedExample:
    prompt: str  # everything the model reads (chat-wrapped when chat is on); no loss
    completion: str  # what the model learns to generate (loss); the end token is added at tokenization
    rationale: str | None = None  # reason-then-recommend: the line written before the completion (loss)
    explanation: str | None = None  # explained recommendation: the line written after the completion (loss)


class PromptTemplate:
    def __reduce__(self):
        """Pickled as its source and text (compiled Jinja templates do not pickle): tokenizing workers
        rebuild it."""
        return self.__class__, (self.source, self.text)

    def __init__(self, source: str, text: str):
        self.source = source
        self.text = text
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        try:
            root = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TemplateError(f"{source}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise TemplateError(f"{source}: a template is a YAML mapping with keys {', '.join(REQUIRED_KEYS)}")
        for key in data:
            if key not in KNOWN_KEYS:
                raise TemplateError(
                    f"{source}:{self._key_line(root, key)}: unknown key '{key}'{suggest(key, KNOWN_KEYS)}; "
                    f"known keys: {', '.join(KNOWN_KEYS)}"
                )
        for key in REQUIRED_KEYS:
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise TemplateError(f"{source}: key '{key}' is required and must be a non-empty string")
        self.name: str = data["name"]
        self.description: str = data.get("description") or ""
        self.system: str | None = data.get("system")
        answers = data.get("answers")
        if answers is not None and not (isinstance(answers, list) and len(answers) == 2 and
                                        all(isinstance(a, str) and a.strip() for a in answers) and
                                        answers[0] != answers[1]):
            raise TemplateError(f"{source}:{self._key_line(root, 'answers')}: 'answers' must be a list of two different "
                                f"non-empty strings, the positive answer first (e.g. [\"Yes\", \"No\"]); found {answers!r}")
        self.answers: tuple[str, str] | None = tuple(answers) if answers else None
        tasks = data.get("tasks") or {}
        if not isinstance(tasks, dict) or any(not isinstance(v, str) or not v.strip() for v in tasks.values()):
            raise TemplateError(f"{source}:{self._key_line(root, 'tasks')}: 'tasks' must map task names to prompt "
                                f"strings ({', '.join(TASK_KEYS)})")
        for task in tasks:
            if task not in TASK_KEYS:
                raise TemplateError(f"{source}:{self._key_line(root, 'tasks')}: unknown task '{task}'"
                                    f"{suggest(task, TASK_KEYS)}; known tasks: {', '.join(TASK_KEYS)}")
        self.tasks: tuple[str, ...] = tuple(tasks)
        self._line_offset = {key: self._value_line_offset(root, key)
                             for key in ("prompt", "completion", "system", *LINE_KEYS)}
        self._compiled = {}
        task_root = next((v for k, v in getattr(root, "value", []) if k.value == "tasks"), None)
        for task, text in tasks.items():
            self._line_offset[f"tasks.{task}"] = self._value_line_offset(task_root, task)
            data[f"tasks.{task}"] = text
        for key in ("prompt", "completion", "system", *LINE_KEYS, *(f"tasks.{t}" for t in tasks)):
            if data.get(key) is None:
                continue
            name = f"{source}#{key}"  # the code's filename: lets render errors find their template line
            try:
                code = _ENV.compile(data[key], name=name, filename=name)
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(f"{source}:{self._line_offset[key] + (e.lineno or 1)}: in '{key}': {e.message}") from None
            self._compiled[key] = _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None), None)

    @classmethod
    def load(cls, path: str | Path) -> "PromptTemplate":
        path = Path(path)
        if not path.is_file():
            raise TemplateError(f"prompt template not found: {path}")
        return cls(str(path), path.read_text(encoding="utf-8"))

    @staticmethod
    def _key_line(root, key: str) -> int:
        for k, _ in getattr(root, "value", []):
            if k.value == key:
                return k.start_mark.line + 1
        return 1

    @staticmethod
    def _value_line_offset(root, key: str) -> int:
        """File line just before the template's line 1 (block scalars start below their key)."""
        for k, v in getattr(root, "value", []):
            if k.value == key:
                return v.start_mark.line + (1 if getattr(v, "style", None) in ("|", ">") else 0)
        return 0

    def _render(self, key: str, variables: dict) -> str:
        """Render one key; any failure (undefined name, an exception inside the template such as {{ 1/0 }},
        a resource limit) becomes a TemplateError naming the file, its line and the key."""
        template = self._compiled[key]
        line = None
        try:
            out, size, chunks = [], 0, template.generate(**variables)
            for chunk in chunks:
                size += len(chunk)
                if size > MAX_OUTPUT:
                    inner = getattr(chunks, "gi_yieldfrom", None)  # the compiled template's generator
                    if inner is not None and inner.gi_frame is not None:
                        line = template.get_corresponding_lineno(inner.gi_frame.f_lineno)
                    raise SecurityError(f"output exceeds the limit of {MAX_OUTPUT:,} characters")
                out.append(chunk)
            return "".join(out)
        except Exception as e:  # noqa: BLE001 (user code: every failure is the template's)
            for frame in traceback.extract_tb(e.__traceback__):
                if frame.filename == template.name:
                    line = frame.lineno
            where = f"{self.source}:{self._line_offset[key] + line}" if line else self.source
            if isinstance(e, jinja2.UndefinedError):
                raise TemplateError(
                    f"{where}: in '{key}': {e.message}; available variables: {', '.join(sorted(variables))}"
                ) from None
            if isinstance(e, SecurityError):
                raise TemplateError(f"{where}: in '{key}': {e} (template resource limits)") from None
            message = e.message if isinstance(e, jinja2.TemplateError) and e.message else str(e)
            raise TemplateError(f"{where}: in '{key}': rendering failed: {type(e).__name__}: {message}") from None

    def variables(self, example: Example, catalog: Catalog, identifier: str, ratings: dict | None = None,
                  history: list[str] | None = None) -> dict:
        """``history``: strings to show instead of the history items' identifiers (the encoder's markers)."""
        history_items = [catalog[i] for i in example.history]
        target_item = catalog[example.target] if example.target is not None else None
        return {
            "user_id": example.user_id,
            "history": history if history is not None else [it.identifier(identifier) for it in history_items],
            "history_items": history_items,
            "history_ratings": [(ratings or {}).get(i) for i in example.history],
            "target": target_item.identifier(identifier) if target_item else None,
            "target_item": target_item,
        }

    def render_prompt(self, example: Example, catalog: Catalog, identifier: str, ratings: dict | None = None,
                      history: list[str] | None = None) -> str:
        if example.task is not None:
            key = f"tasks.{example.task}"
            if key not in self._compiled:
                raise TemplateError(f"{self.source}: training mixes in '{example.task}' examples but the template has "
                                    f"no 'tasks: {example.task}:' prompt; add one or set its train.mix_* to 0")
            variables = self.variables(example, catalog, identifier, ratings)
            return self._render(key, {**variables, "masked": example.masked}).strip("\n")
        return self._render("prompt", self.variables(example, catalog, identifier, ratings, history)).strip("\n")

    def render_completion(self, item: Item, identifier: str, user_id: str = "") -> str:
        variables = {"user_id": user_id, "history": [], "history_items": [], "history_ratings": [],
                     "target": item.identifier(identifier), "target_item": item}
        return self._render("completion", variables)

    def render_answer(self, answer: str) -> str:
        """Pointwise templates: the completion for one of ``answers``."""
        return self._render("completion", {"answer": answer})

    @property
    def has_rationale(self) -> bool:
        return "rationale" in self._compiled

    @property
    def has_explanation(self) -> bool:
        return "explanation" in self._compiled

    def render_rationale(self, example: Example, catalog: Catalog, identifier: str) -> str:
        """The rationale line (no newline: the encoder ends it with one, the stop signal at inference)."""
        if example.rationale is None:
            raise TemplateError(f"{self.source}: 'rationale' needs a rationale for user {example.user_id}; "
                                "build examples with genrec.causal.rationale.RationaleBuilder.attach")
        return self._line("rationale", example, catalog, identifier, example.rationale)

    def render_explanation(self, example: Example, catalog: Catalog, identifier: str, text: str | None = None) -> str:
        """The explanation line of ``example`` (its own ``explanation`` unless ``text`` is given), no newline."""
        text = example.explanation if text is None else text
        if text is None:
            raise TemplateError(f"{self.source}: 'explanation' needs an explanation for user {example.user_id}; "
                                "build examples with Setup.training_examples (genrec.explain.statements)")
        return self._line("explanation", example, catalog, identifier, text)

    def explanation_affixes(self, example: Example, catalog: Catalog, identifier: str) -> tuple[str, str]:
        """The text the explanation line puts before and after the explanation itself (to read it back)."""
        marker = "\u2063explanation\u2063"
        before, _, after = self.render_explanation(example, catalog, identifier, marker).partition(marker)
        return before, after

    def _line(self, key: str, example: Example, catalog: Catalog, identifier: str, text: str) -> str:
        line = self._render(key, {**self.variables(example, catalog, identifier), key: text}).strip("\n")
        if "\n" in line:
            raise TemplateError(f"{self.source}: '{key}' must render to one line (its newline ends it at inference)")
        return line

    def render_system(self) -> str | None:
        return self._render("system", {}) if "system" in self._compiled else None

    def check(self, catalog: Catalog, identifier: str) -> None:
        """Render every key against real catalog items, so undefined names, exceptions raised inside the
        template and resource limits surface as TemplateErrors before any model loads."""
        sample = [catalog[i] for i in range(min(3, len(catalog)))]
        example = Example("validation-user", tuple(it.index for it in sample[:-1]), sample[-1].index)
        self.render_system()
        self.render_prompt(example, catalog, identifier)
        self._check_tasks(example, catalog, identifier, sample)
        if self.answers:
            self._check_pointwise(example, catalog, identifier, sample)
            return
        if self.has_rationale:
            self.render_rationale(replace(example, rationale="likes Drama (2)"), catalog, identifier)
        if self.has_explanation:
            if self.has_rationale:
                raise TemplateError(f"{self.source}: a template writes a rationale or an explanation, not both")
            self.render_explanation(replace(example, explanation="you loved it"), catalog, identifier)
        completions = {self.render_completion(it, identifier) for it in sample}
        if len(sample) > 1 and len(completions) == 1:
            raise TemplateError(
                f"{self.source}: 'completion' renders the same text for different items; it must use {{{{ target }}}}"
            )
        if len(sample) > 1:
            other = Example(example.user_id, example.history, sample[0].index)
            if self.render_prompt(other, catalog, identifier) != self.render_prompt(example, catalog, identifier):
                raise TemplateError(
                    f"{self.source}: 'prompt' changes with the target item: it would show the model the answer; "
                    "use target/target_item only in 'completion'"
                )


    def _check_tasks(self, example: Example, catalog: Catalog, identifier: str, sample: list[Item]) -> None:
        """Each task prompt renders, and none shows the item it asks for (a masked item left visible)."""
        if len(sample) < 2:
            return
        for task in self.tasks:
            if task == "masked_item":
                one = replace(example, task=task, masked=0, history=(sample[0].index, sample[1].index), target=sample[0].index)
                two = replace(one, history=(sample[2 % len(sample)].index, sample[1].index), target=sample[2 % len(sample)].index)
            else:
                one = Example("", (), sample[0].index, task=task)
                two = Example("", (), sample[1].index, task=task)
            first, second = self.render_prompt(one, catalog, identifier), self.render_prompt(two, catalog, identifier)
            if task == "masked_item" and first != second:
                raise TemplateError(f"{self.source}: 'tasks: masked_item' shows the hidden item: replace "
                                    "history[masked] (e.g. {{ '[?]' if loop.index0 == masked else item }})")
            if task == "item_from_text" and first == second:
                raise TemplateError(f"{self.source}: 'tasks: item_from_text' renders the same prompt for different "
                                    "items; it must describe target_item")

    def _check_pointwise(self, example: Example, catalog: Catalog, identifier: str, sample: list[Item]) -> None:
        if self.has_rationale or self.has_explanation:
            raise TemplateError(f"{self.source}: a pointwise template ('answers') writes only the answer, "
                                "not a rationale or an explanation")
        yes, no = (self.render_answer(a) for a in self.answers)
        if yes == no:
            raise TemplateError(f"{self.source}: 'completion' renders the same text for both answers; it must use "
                                "{{ answer }}")
        if len(sample) > 1:
            other = Example(example.user_id, example.history, sample[0].index)
            if self.render_prompt(other, catalog, identifier) == self.render_prompt(example, catalog, identifier):
                raise TemplateError(f"{self.source}: a pointwise prompt must show the candidate item it asks about "
                                    "({{ target }} or {{ target_item.text }})")


def _accepts_system_turn(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (Gemma's raises on one)."""
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                      tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja's TemplateError from raise_exception, or the template's own error
        return False
    return True


class PromptFormatter:
    """Template + tokenizer: the exact text the model reads, chat-wrapped when asked."""

    def __init__(self, template: PromptTemplate, tokenizer, catalog: Catalog, identifier: str, chat: str = "auto",
                 ratings: dict[str, dict[int, float]] | None = None, items_delimit: bool | None = None):
        self.template, self.tokenizer, self.catalog, self.identifier = template, tokenizer, catalog, identifier
        self.ratings = ratings or {}  # user -> item -> rating: the templates' history_ratings
        # items end themselves (added item tokens; titles ending in the end token under the sequence objective):
        # the answer follows the history directly, with no newline between
        self.items_delimit = identifier in ("atomic", "semantic") if items_delimit is None else items_delimit
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if chat == "on" and not has_chat:
            raise TemplateError("prompt.chat=on but the tokenizer has no chat template; use prompt.chat=auto or off")
        self.use_chat = has_chat and chat != "off"
        self.system_turn = self.use_chat and _accepts_system_turn(tokenizer)

    def prompt(self, example: Example, history: list[str] | None = None) -> str:
        body = self.template.render_prompt(example, self.catalog, self.identifier, self.ratings.get(example.user_id),
                                           history)
        if not self.use_chat:
            # self-delimiting items: the answer follows the history directly, exactly as every item inside
            # the history follows the one before it (what the sequence objective trains)
            return body if self.items_delimit else body + "\n"
        messages = []
        system = self.template.render_system()
        if system and self.system_turn:
            messages.append({"role": "system", "content": system.strip()})
        elif system:  # Gemma-style chat templates refuse a system turn: it opens the user's turn instead
            body = f"{system.strip()}\n\n{body}"
        messages.append({"role": "user", "content": body})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def render(self, example: Example) -> RenderedExample:
        if self.template.answers:
            if example.label is None:
                raise TemplateError(f"{self.template.source} is pointwise ('answers'): example of user "
                                    f"{example.user_id} has no yes/no label; build examples with genrec.paradigms.pointwise")
            answer = self.template.answers[0 if example.label else 1]
            return RenderedExample(self.prompt(example), self.template.render_answer(answer))
        completion = self.template.render_completion(self.catalog[example.target], self.identifier, example.user_id)
        rationale = self.template.render_rationale(example, self.catalog, self.identifier) \
            if self.template.has_rationale else None
        explanation = self.template.render_explanation(example, self.catalog, self.identifier) \
            if self.template.has_explanation else None
        return RenderedExample(self.prompt(example), completion, rationale, explanation)
