"""Writing the explanation of a recommended item with the model (explain.* settings).

The model reads the prompt, then the item, then writes the template's explanation line:

- ``grounded`` (explain.decoding): every true statement the evidence supports (genrec.explain.statements) is a
  candidate line, scored exactly by teacher forcing after the item (one shared prompt,
  genrec.decoding.search.score_continuations), and the best is written — the explanation counterpart of
  trie-constrained item decoding. With ``explain.select=faithful`` the candidates are first narrowed to
  those citing the evidence the model relies on most: of the history-item sets the candidates cite, the
  one whose removal from the prompt lowers the item's log-probability most (when any does).
- ``free``: greedy text up to the line's newline, to be checked afterwards (genrec.explain.verify).
"""

from __future__ import annotations

from dataclasses import replace

from tqdm.auto import tqdm

from genrec.data.splits import Example
from genrec.decoding.search import greedy_lines, score_continuations
from genrec.errors import ConfigError
from genrec.explain.necessity import item_logprob
from genrec.explain.statements import Explanation


def explain(recommender, examples: list[Example], items: list[int], decoding: str | None = None,
            progress: bool = False) -> list[str]:
    """The explanation of ``items[i]`` for ``examples[i]`` ("" when the evidence supports no statement)."""
    setup = recommender.setup
    if not setup.template.has_explanation:
        raise ConfigError(f"{setup.template.source} has no 'explanation' key: explaining needs a template that "
                          "writes one after the item (e.g. prompts/recommend_then_explain.yaml) and a model trained with it")
    decoding = decoding or setup.cfg.explain.decoding
    prefixes = [setup.encoder.prompt_ids(ex) + setup.index.sequences[item] for ex, item in zip(examples, items)]
    if decoding == "free":
        return free_explanations(recommender, examples, items, prefixes, progress)
    out = []
    for ex, item, prefix in tqdm(list(zip(examples, items, prefixes)), desc="explaining", disable=not progress,
                                 unit="item"):
        candidates = setup.explainer.candidates(setup.explainer.evidence.build(ex.user_id, ex.history, item))
        if setup.cfg.explain.select == "faithful":
            candidates = citing_what_matters(recommender, ex, item, candidates)
        if not candidates:
            out.append("")
            continue
        target = replace(ex, target=item)
        lines = [setup.encoder.rationale_ids(setup.template.render_explanation(target, setup.split.catalog,
                                                                                setup.formatter.identifier, c.text))
                 for c in candidates]
        scores = score_continuations(recommender.model, prefix, lines, setup.cfg.explain.length_penalty)
        out.append(candidates[int(scores.argmax())].text)
    return out


def citing_what_matters(recommender, example: Example, item: int, candidates: list[Explanation]) -> list[Explanation]:
    """The candidates that cite the evidence the model relies on most; all of them when no cited set lowers the
    item's log-probability (then the explanation need not cite anything)."""
    cited = list(dict.fromkeys(frozenset(c.cited) for c in candidates if c.cited))
    if not cited:
        return candidates
    base = item_logprob(recommender, example.user_id, example.history, item)
    drops = [base - item_logprob(recommender, example.user_id, tuple(h for h in example.history if h not in s), item)
             for s in cited]
    best = max(range(len(cited)), key=drops.__getitem__)
    return [c for c in candidates if frozenset(c.cited) == cited[best]] if drops[best] > 0 else candidates


def free_explanations(recommender, examples, items, prefixes, progress) -> list[str]:
    """Greedy lines after each prefix, with the template's text around the explanation taken off."""
    setup, batch = recommender.setup, recommender.options.batch_users
    texts = []
    for lo in tqdm(range(0, len(prefixes), batch), desc="explaining", disable=not progress, unit="batch"):
        texts += [setup.tokenizer.decode(ids) for ids in greedy_lines(
            recommender.model, prefixes[lo: lo + batch], setup.encoder.newline_tokens(),
            setup.cfg.explain.max_new_tokens, setup.tokenizer.pad_token_id)]
    out = []
    for ex, item, text in zip(examples, items, texts):
        before, after = setup.template.explanation_affixes(replace(ex, target=item), setup.split.catalog,
                                                           setup.formatter.identifier)
        text = text.strip("\n")
        text = text[len(before):] if before and text.startswith(before) else text
        text = text[: -len(after)] if after and text.endswith(after) else text
        out.append(text.strip())
    return out
