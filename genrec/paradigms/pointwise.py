"""Pointwise preference (TALLRec style): "will the user enjoy X? Yes/No".

Examples pair a history with one candidate item (the next interaction) and a label (rated above
data.like_threshold). The model is scored by log p(yes) - log p(no) of the first token of each
answer, read from the tokenizer's own tokenization of the template's answers — never hard-coded
ids — and evaluated by ROC AUC over the evaluated users' held-out interactions.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import torch

from genrec.data.splits import Example, Split
from genrec.errors import ConfigError, DataError, TemplateError
from genrec.model.output_head import OutputHead
from genrec.training.batching import prompt_inputs


def liked(split: Split, user: str, item: int, threshold: float) -> bool | None:
    """Whether the user's rating of ``item`` is above ``threshold``; None when unrated."""
    rating = split.ratings.get(user, {}).get(item)
    return None if rating is None else rating > threshold


def pointwise_examples(split: Split, max_history: int, threshold: float, time_cut: float | None = None,
                       period: str = "all") -> list[Example]:
    """Every rated training interaction after a user's first, asked about with the items before it."""
    out = []
    for user in split.sequences:
        part = split.train_part(user)
        lo, hi = split.period_targets(user, time_cut, period)
        for t in range(max(1, lo), hi):
            label = liked(split, user, part[t], threshold)
            if label is not None:
                out.append(Example(user, tuple(part[max(0, t - max_history):t]), part[t], label=label))
    if not out:
        raise DataError("pointwise training needs rated interactions (data.rating_column); none found in the "
                        "training parts")
    return out


def build_examples(setup, examples: list[Example]) -> list[Example]:
    """Example builder (genrec.recommender.EXAMPLE_BUILDERS), for pointwise templates ('answers'): labelled
    candidates, a like/dislike-balanced sample of train.examples of them when set."""
    if not setup.template.answers:
        return examples
    cfg = setup.cfg
    if cfg.train.objective == "sequence":
        raise ConfigError(f"{setup.template.source} is pointwise ('answers'): it asks about one candidate "
                          "per prompt, which needs train.objective=target")
    data = cfg.data
    labelled = pointwise_examples(setup.split, data.max_history, data.like_threshold, data.time_cut_seconds,
                                  data.train_period)
    n = cfg.train.examples
    return examples + (labelled if n is None else balanced_sample(labelled, n, cfg.run.seed))


def balanced_sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded sample of ``n`` examples, half likes and half dislikes where both suffice (TALLRec's
    few-shot sets are balanced), in their original order."""
    rng = random.Random(seed)
    pos = [i for i, ex in enumerate(examples) if ex.label]
    neg = [i for i, ex in enumerate(examples) if not ex.label]
    n_pos = min(len(pos), max(n - len(neg), n // 2))
    chosen = rng.sample(pos, n_pos) + rng.sample(neg, min(len(neg), n - n_pos))
    return [examples[i] for i in sorted(chosen)]


def evaluation_examples(split: Split, users: list[str], split_name: str, max_history: int,
                        threshold: float) -> list[Example]:
    """Each user's held-out interaction as the candidate, labelled; unrated ones are left out."""
    out = []
    for user in users:
        ex = split.example(user, split_name, max_history)
        label = liked(split, user, ex.target, threshold)
        if label is not None:
            out.append(Example(user, ex.history, ex.target, label=label))
    return out


def answer_token_ids(encoder) -> tuple[int, int]:
    """The first token of the positive and of the negative answer's completion, as the model writes them."""
    template = encoder.formatter.template
    yes, no = (encoder.completion_ids(template.render_answer(a))[0] for a in template.answers)
    if yes == no:
        raise TemplateError(f"{template.source}: the answers {template.answers} start with the same token "
                            f"({yes}); pick answers whose first tokens differ")
    return yes, no


@torch.no_grad()
def preference_scores(model, prompts: list[list[int]], yes_id: int, no_id: int, pad_id: int,
                      batch_size: int = 8) -> list[float]:
    """log p(yes) - log p(no) at the end of each prompt (left-padded batches of similar length).

    The softmax normaliser cancels in the difference, so it is the difference of the two logits: with a
    plain output layer it is computed in fp32 from the last hidden state and the two output rows, not
    read off bf16 logits (whose ~0.1 resolution at typical magnitudes ties many scores)."""
    device = next(model.parameters()).device
    head = OutputHead(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    scores = [0.0] * len(prompts)
    for lo in range(0, len(order), batch_size):
        rows = order[lo: lo + batch_size]
        inputs = {**prompt_inputs([prompts[i] for i in rows], pad_id, device), "use_cache": False}
        margin = head.logit_margin(head.states(inputs, -1)[0], yes_id, no_id)
        for i, value in zip(rows, margin.tolist()):
            scores[i] = value
    return scores


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties counting half
    (the Mann-Whitney U statistic over average ranks)."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        raise DataError(f"AUC needs both likes and dislikes among the evaluated interactions; found {n_pos} and {n_neg}")
    ranks = pd.Series(scores, dtype=float).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rating_baselines(split: Split, examples: list[Example]) -> dict[str, float]:
    """AUC of two non-LLM scores of the same examples, from the training parts' ratings only: the user's
    mean rating (some users like most of what they watch) and the item's mean rating over all users."""
    user_sum, user_n, item_sum, item_n = {}, {}, np.zeros(len(split.catalog)), np.zeros(len(split.catalog))
    for user in split.sequences:
        rated = split.ratings.get(user, {})
        for item in split.train_part(user):
            if item in rated:
                user_sum[user] = user_sum.get(user, 0.0) + rated[item]
                user_n[user] = user_n.get(user, 0) + 1
                item_sum[item] += rated[item]
                item_n[item] += 1
    overall = float(item_sum.sum() / max(item_n.sum(), 1))
    labels = [bool(ex.label) for ex in examples]
    users = [user_sum[ex.user_id] / user_n[ex.user_id] if user_n.get(ex.user_id) else overall for ex in examples]
    items = [item_sum[ex.target] / item_n[ex.target] if item_n[ex.target] else overall for ex in examples]
    return {"user_mean_rating": roc_auc(users, labels), "item_mean_rating": roc_auc(items, labels)}


def sharded_scores(accelerator, model, encoder, examples: list[Example], batch_size: int = 8) -> list[float]:
    """The yes/no score of every example: each process scores examples[rank::world] and every process
    gets all of them back, in example order."""
    yes_id, no_id = answer_token_ids(encoder)
    rank, world = accelerator.process_index, accelerator.num_processes
    prompts = [encoder.prompt_ids(ex) for ex in examples[rank::world]]
    with accelerator.autocast():
        mine = preference_scores(model, prompts, yes_id, no_id, encoder.tokenizer.pad_token_id, batch_size)
    scores = [0.0] * len(examples)
    for r, part in enumerate(accelerator.gather_for_metrics([mine], use_gather_object=True)):
        scores[r::world] = part
    return scores
