"""Explained top-K of any recommender: its own ranking, each item with a grounded "because" line.

The ranking is the recommender's, unchanged (the headline atomic recipe, one run or an ensemble). Each of
its top-K items is explained the way ``explain.decoding=grounded`` explains (genrec.explain.generation):

1. the candidates are every true statement the data supports about the (user, item) pair
   (genrec.explain.statements), so an explanation can only say true things;
2. faithful selection (``explain.select=faithful``): of the history-item sets the candidates cite, keep the
   candidates citing the set whose removal from the history lowers the item's score the most — scored by
   the *recommending* model, so the explanation cites what the ranking actually relied on;
3. wording: the likeliest remaining line under a language model reading the history as titles, the item,
   and the line (``explain.template``, default prompts/explain_line.yaml), mean log-probability per token,
   that no higher-ranked item of the list already uses (``distinct_picks``);
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


def distinct_picks(candidates: list[list[Explanation]], scores: list[list[float]]) -> list[Explanation | None]:
    """Per item, in rank order, its best-scored candidate whose text no higher-ranked item of the list already
    uses (its best one when every candidate is used).

    Why: a list's items often share their best-supported statement ("6 of your last 10 movies were Action"),
    so the likeliest line alone repeats the same sentence down a top-10 (a quarter of the lines, measured on
    ml-100k); any true line is a valid explanation, and a list that says something different for each item
    tells the user more."""
    used, out = set(), []
    for cands, row in zip(candidates, scores):
        if not cands:
            out.append(None)
            continue
        order = sorted(range(len(cands)), key=lambda i: -row[i])
        pick = next((cands[i] for i in order if cands[i].text not in used), cands[order[0]])
        used.add(pick.text)
        out.append(pick)
    return out


class RankingExplainer:
    def __init__(self, recommender):
        setup = recommender.setup
        self.recommender, self.setup = recommender, setup
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
        if cfg.select == "faithful":
            candidates = self._faithful(example, [item for item, _ in ranked], candidates)
        chosen = self._likeliest(example, [item for item, _ in ranked], candidates)
        out = []
        for (item, score), line in zip(ranked, chosen):
            if line is None:
                out.append(ExplainedItem(item, score))
                continue
            verdict = self.verifier.verify(line.text, example.user_id, example.history, item)
            out.append(ExplainedItem(item, score, line.text, tuple(sorted(verdict.cited)), verdict.claims))
        return out

    def _faithful(self, example: Example, items: list[int],
                  candidates: list[list[Explanation]]) -> list[list[Explanation]]:
        """Per item, the candidates citing the history set whose removal lowers its score most (all of them when
        none lowers it)."""
        sets = list(dict.fromkeys(frozenset(c.cited) for cands in candidates for c in cands if c.cited))
        if not sets:
            return candidates
        histories = [example.history] + [tuple(h for h in example.history if h not in s) for s in sets]
        scores = self._item_scores(example.user_id, histories, items)  # [histories, items]
        out = []
        for j, cands in enumerate(candidates):
            mine = [s for s in dict.fromkeys(frozenset(c.cited) for c in cands if c.cited)]
            if not mine:
                out.append(cands)
                continue
            drops = {s: scores[0, j] - scores[1 + sets.index(s), j] for s in mine}
            best = max(mine, key=drops.__getitem__)
            out.append([c for c in cands if frozenset(c.cited) == best] if drops[best] > 0 else cands)
        return out

    def _item_scores(self, user_id: str, histories: list[tuple[int, ...]], items: list[int]) -> torch.Tensor:
        """[histories, items]: the recommender's log-probability of each item after each history."""
        if self.setup.index.max_depth == 1:  # one token per item: one forward per history gives every item
            prompts = [self.setup.encoder.prompt_ids(Example(user_id, h, None)) for h in histories]
            return self.recommender.item_log_probs(prompts, shared_prefix=True)[:, items].cpu()
        return torch.tensor([[item_logprob(self.recommender, user_id, h, i) for i in items] for h in histories])

    def _likeliest(self, example: Example, items: list[int],
                   candidates: list[list[Explanation]]) -> list[Explanation | None]:
        """The best-scored candidate line of every item: one forward pass reads the prompt once, each item's
        title once, and every candidate line after its title (genrec.decoding.search.score_branches)."""
        branches = []
        for item, cands in zip(items, candidates):
            target = replace(example, target=item)
            branches.append((self._item_ids(item, example.user_id), [self.encoder.rationale_ids(
                self.template.render_explanation(target, self.setup.split.catalog, self.identifier, c.text))
                for c in cands]))
        if not any(lines for _, lines in branches):
            return [None] * len(items)
        shown = example.history[-self.setup.cfg.explain.prompt_history:]
        prompt = self.encoder.prompt_ids(replace(example, history=shown, target=None))
        scores = score_branches(self.recommender.model, prompt, branches, self.setup.cfg.explain.length_penalty,
                                self.recommender.next_logp)
        return distinct_picks(candidates, scores)

    @functools.lru_cache(maxsize=4096)
    def _item_ids(self, item: int, user_id: str) -> list[int]:
        """The item as the explanation template writes it before the line (no end token: the line follows)."""
        text = self.template.render_completion(self.setup.split.catalog[item], self.identifier, user_id)
        return self.setup.tokenizer(text, add_special_tokens=False)["input_ids"]
