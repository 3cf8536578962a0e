"""Explained top-K of any recommender: its own ranking, each item with a grounded "because" line.

The ranking is the recommender's, unchanged (the headline atomic recipe, one run or an ensemble). Each of
its top-K items is explained the way ``explain.decoding=grounded`` explains (genrec.explain.generation):

1. the candidates are every true statement the data supports about the (user, item) pair
   (genrec.explain.statements), so an explanation can only say true things;
2. faithful selection (``explain.select=faithful``): of the history-item sets the candidates cite, keep the
   candidates citing the set whose removal from the history lowers the item's score the most — scored by
   the *recommending* model, so the explanation cites what the ranking actually relied on;
3. wording: the likeliest line under a language model reading the history as titles, the item, and the
   line (``explain.template``, default prompts/explain_line.yaml), mean log-probability per token, whose
   statement no higher-ranked item of the list already makes (``distinct_picks``); when every line of the
   best set is taken, the likeliest of the next sets by that drop (``explain.fallback_sets`` of them);
4. the chosen line's claims are parsed and re-checked against the data (genrec.explain.verify).

It is built for serving: all K items are explained together. For one-token items (atomic ids) step 2 is
one packed forward over the history and its reduced copies, which share their beginnings (each gives every
item's score at once), and step 3 is one packed forward of the prompt, every item's title and every
candidate line (genrec.decoding.packed, genrec.decoding.search.score_branches).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import torch

from genrec.data.splits import Example
from genrec.decoding.search import score_branches
from genrec.errors import ConfigError
from genrec.explain.necessity import item_logprob
from genrec.explain.statements import Explanation
from genrec.explain.verify import Claim, ExplanationVerifier
from genrec.prompts.encoding import Encoder
from genrec.prompts.template import PromptFormatter, PromptTemplate


@dataclass
class ExplainedItem:
    item: int  # catalog index
    score: float  # the recommender's ranking score
    explanation: str = ""  # "" when the evidence supports no statement about the pair
    cited: tuple[int, ...] = ()  # history items the explanation cites
    claims: list[Claim] = field(default_factory=list)  # its claims, each checked against the data

    @property
    def claims_true(self) -> int:
        return sum(c.true for c in self.claims)


def explanation_template(setup) -> PromptTemplate:
    """The template whose explanation line is scored: the recommender's own when it writes one (the
    recommend-then-explain recipe), else explain.template; checked before any weights load."""
    if setup.template.has_explanation:
        return setup.template
    template = PromptTemplate.load(setup.cfg.explain.template)
    if not template.has_explanation:
        raise ConfigError(f"explain.template={setup.cfg.explain.template} has no 'explanation' key; it must render "
                          "the line after the item (see prompts/explain_line.yaml)")
    template.check(setup.split.catalog, "title")
    return template


def statement(line: Explanation):
    """What a line claims, whatever its wording: its family and the history items it cites (a genre count
    cites the counted items), or its text when it cites none (era, plain and "different" lines)."""
    return (line.family, line.cited) if line.cited else line.text


def distinct_picks(candidates: list[list[Explanation]], scores: list[list[float]],
                   fallbacks: list[list[list[Explanation]]] | None = None,
                   fallback_scores: list[list[list[float]]] | None = None) -> list[Explanation | None]:
    """Per item, in rank order: its best-scored candidate whose statement no higher-ranked item of the list
    already makes; else the best-scored such line of its first fallback tier that has one (``fallbacks``:
    per item, groups of lines in order of preference, e.g. the evidence whose removal lowers the item's
    score second most, then third); else its best candidate, repeated.

    Why: a list's items often share their best-supported statement ("6 of your last 10 movies were Action"),
    so the likeliest line alone repeats the same claim down a top-10 (a quarter of the lines, measured on
    ml-100k), in the same or another wording; any true line is a valid explanation, and a list that says
    something different for each item tells the user more."""
    fallbacks = fallbacks or [[] for _ in candidates]
    fallback_scores = fallback_scores or [[] for _ in candidates]
    used, out = set(), []
    for cands, row, tiers, tier_scores in zip(candidates, scores, fallbacks, fallback_scores):
        if not cands:
            out.append(None)
            continue
        ranked = [line for group, group_scores in [(cands, row), *zip(tiers, tier_scores)]
                  for _, line in sorted(zip(group_scores, group), key=lambda pair: -pair[0])]
        pick = next((line for line in ranked if statement(line) not in used), ranked[0])
        used.add(statement(pick))
        out.append(pick)
    return out


class RankingExplainer:
    def __init__(self, recommender, fallback_sets: int | None = None):
        """``fallback_sets``: how many next-best cited sets may stand in for a claim already made higher in the
        list (default: explain.fallback_sets)."""
        setup = recommender.setup
        self.recommender, self.setup = recommender, setup
        self.fallback_sets = setup.cfg.explain.fallback_sets if fallback_sets is None else fallback_sets
        template = explanation_template(setup)
        self.template = template
        # the lines are scored with the items as titles (language the model reads), whatever the identifier
        self.identifier = setup.formatter.identifier if template is setup.template else "title"
        formatter = PromptFormatter(template, setup.tokenizer, setup.split.catalog, self.identifier,
                                    "off" if template is not setup.template else setup.cfg.prompt.chat,
                                    setup.split.ratings)
        self.encoder = Encoder(formatter, setup.cfg.train.max_length)
        self.verifier = ExplanationVerifier(setup.explainer.evidence)

    def __call__(self, example: Example, ranked: list[tuple[int, float]]) -> list[ExplainedItem]:
        """``ranked``: the recommender's (item, score) list for ``example`` (its history is what is explained)."""
        setup, cfg = self.setup, self.setup.cfg.explain
        explainer = setup.explainer
        candidates = [explainer.candidates(explainer.evidence.build(example.user_id, example.history, item),
                                           cfg.paraphrases) for item, _ in ranked]
        items = [item for item, _ in ranked]
        fallbacks = None
        if cfg.select == "faithful":
            tiers = self._faithful_tiers(example, items, candidates)
            candidates = [mine[0] for mine in tiers]
            fallbacks = self._fallbacks(tiers, self.fallback_sets)
        chosen = self._likeliest(example, items, candidates, fallbacks)
        out = []
        for (item, score), line in zip(ranked, chosen):
            if line is None:
                out.append(ExplainedItem(item, score))
                continue
            verdict = self.verifier.verify(line.text, example.user_id, example.history, item)
            out.append(ExplainedItem(item, score, line.text, tuple(sorted(verdict.cited)), verdict.claims))
        return out

    def _faithful_tiers(self, example: Example, items: list[int],
                        candidates: list[list[Explanation]]) -> list[list[list[Explanation]]]:
        """Per item, its candidates grouped by the history set they cite, the set whose removal lowers the item's
        score most first, then only the sets whose removal lowers it at all (one group of every candidate when
        none lowers it)."""
        sets = list(dict.fromkeys(frozenset(c.cited) for cands in candidates for c in cands if c.cited))
        if not sets:
            return [[cands] for cands in candidates]
        histories = [example.history] + [tuple(h for h in example.history if h not in s) for s in sets]
        scores = self._item_scores(example.user_id, histories, items)  # [histories, items]
        out = []
        for j, cands in enumerate(candidates):
            mine = [s for s in dict.fromkeys(frozenset(c.cited) for c in cands if c.cited)]
            drops = {s: float(scores[0, j] - scores[1 + sets.index(s), j]) for s in mine}
            lowering = sorted((s for s in mine if drops[s] > 0), key=lambda s: -drops[s])
            out.append([[c for c in cands if frozenset(c.cited) == s] for s in lowering] if lowering else [cands])
        return out

    def _fallbacks(self, tiers: list[list[list[Explanation]]], depth: int) -> list[list[list[Explanation]]]:
        """Per item, the next ``depth`` groups of its faithful tiers, where it may need them: when every statement
        of its first group is also in the first group of a higher-ranked item (so the list may already make
        it). Scoring only those keeps the one packed forward small."""
        out, above = [], set()
        for mine in tiers:
            first = {statement(c) for c in mine[0]}
            out.append(mine[1: 1 + depth] if first and first <= above else [])
            above |= first
        return out

    def _item_scores(self, user_id: str, histories: list[tuple[int, ...]], items: list[int]) -> torch.Tensor:
        """[histories, items]: the recommender's log-probability of each item after each history."""
        if self.setup.index.max_depth == 1:  # one token per item: one forward per history gives every item
            prompts = [self.setup.encoder.prompt_ids(Example(user_id, h, None)) for h in histories]
            return self.recommender.item_log_probs(prompts, shared_prefix=True)[:, items].cpu()
        return torch.tensor([[item_logprob(self.recommender, user_id, h, i) for i in items] for h in histories])

    def _likeliest(self, example: Example, items: list[int], candidates: list[list[Explanation]],
                   fallbacks: list[list[list[Explanation]]] | None = None) -> list[Explanation | None]:
        """The chosen line of every item (``distinct_picks``): one forward pass reads the prompt once, each item's
        title once, and every candidate and fallback line after its title
        (genrec.decoding.search.score_branches)."""
        fallbacks = fallbacks or [[] for _ in items]
        branches = []
        for item, cands, tiers in zip(items, candidates, fallbacks):
            target = replace(example, target=item)
            lines = [*cands, *(c for tier in tiers for c in tier)]
            branches.append((self._item_ids(item, example.user_id), [self.encoder.rationale_ids(
                self.template.render_explanation(target, self.setup.split.catalog, self.identifier, c.text))
                for c in lines]))
        if not any(lines for _, lines in branches):
            return [None] * len(items)
        shown = example.history[-self.setup.cfg.explain.prompt_history:]
        prompt = self.encoder.prompt_ids(replace(example, history=shown, target=None))
        scores = score_branches(self.recommender.model, prompt, branches, self.setup.cfg.explain.length_penalty,
                                self.recommender.next_logp)
        head_scores, tier_scores = [], []
        for cands, tiers, row in zip(candidates, fallbacks, scores):
            head_scores.append(row[:len(cands)])
            rest, groups = row[len(cands):], []
            for tier in tiers:
                groups.append(rest[:len(tier)])
                rest = rest[len(tier):]
            tier_scores.append(groups)
        return distinct_picks(candidates, head_scores, fallbacks, tier_scores)

    @functools.lru_cache(maxsize=4096)
    def _item_ids(self, item: int, user_id: str) -> list[int]:
        """The item as the explanation template writes it before the line (no end token: the line follows)."""
        text = self.template.render_completion(self.setup.split.catalog[item], self.identifier, user_id)
        return self.setup.tokenizer(text, add_special_tokens=False)["input_ids"]
