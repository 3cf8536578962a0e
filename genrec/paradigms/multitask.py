"""Self-supervised tasks mixed with next-item examples (P5 / LC-Rec style).

- ``masked_item``: a window of a user's training items with one hidden; the model names the hidden
  item from the items before *and after* it (the template's ``tasks.masked_item`` prompt hides
  ``history[masked]``).
- ``item_from_text``: an item's text (title, genres, year: the template's ``tasks.item_from_text``
  prompt over ``target_item``) → the item, aligning each identifier with what it stands for.

Both complete with the item exactly as next-item examples do, so with atomic ids and
train.item_softmax every task trains the same item softmax. How many of each joins the training
set is set by train.mix_masked_item (per training interaction) and train.mix_item_from_text (per
catalog item); the examples are drawn once from run.seed and reused every epoch.
"""

from __future__ import annotations

import random

from genrec.data.splits import Example, Split
from genrec.errors import ConfigError
from genrec.prompts.encoding import IGNORE_INDEX


def build_examples(setup, examples: list[Example]) -> list[Example]:
    """Example builder (genrec.recommender.EXAMPLE_BUILDERS): the self-supervised examples mixed into
    training (train.mix_*), after the next-item ones."""
    train, data, template, split = setup.cfg.train, setup.cfg.data, setup.template, setup.split
    for task, mix in (("masked_item", train.mix_masked_item), ("item_from_text", train.mix_item_from_text)):
        if mix and task not in template.tasks:
            raise ConfigError(f"train.mix_{task}={mix} but {template.source} has no 'tasks: {task}:' prompt; "
                              "add one (see prompts/next_item_atomic_multitask.yaml) or set it to 0")
    out = []
    if train.mix_masked_item:
        targets = {u: split.period_targets(u, data.time_cut_seconds, data.train_period) for u in split.sequences}
        out += masked_item_examples(split, train.mix_masked_item, train.mask_window, setup.cfg.run.seed, targets)
    if train.mix_item_from_text:
        out += item_from_text_examples(split, train.mix_item_from_text, setup.cfg.run.seed)
    if out and (template.has_rationale or template.has_explanation or template.answers):
        raise ConfigError(f"train.mix_* tasks complete with the item alone; {template.source} writes a "
                          "rationale, an explanation or a yes/no answer")
    return examples + out


def masked_item_examples(split: Split, per_interaction: float, window: int, seed: int,
                         targets: dict[str, tuple[int, int]] | None = None) -> list[Example]:
    """round(per_interaction × training interactions) examples, each hiding one training interaction drawn
    uniformly (within ``targets[user]`` = [lo, hi) positions when given) in a window of up to ``window``
    of the user's training items around it."""
    rng = random.Random(seed)
    pool = []
    for user in split.sequences:
        part = split.train_part(user)
        lo, hi = targets[user] if targets else (0, len(part))
        if len(part) >= 2:
            pool += [(user, t) for t in range(lo, hi)]
    out = []
    for user, t in (rng.choice(pool) for _ in range(round(per_interaction * len(pool)) if pool else 0)):
        part = split.train_part(user)
        start = max(0, min(t - rng.randrange(window), len(part) - window))
        items = tuple(part[start: start + window])
        out.append(Example(user, items, part[t], task="masked_item", masked=t - start))
    return out


def label_weights(labels: list[int], base: list[float] | None, task: str | None, task_weight: float) -> list[float]:
    """Per-label loss weights of a training row: ``base`` (e.g. popularity weights; None = 1 per label) times
    train.task_weight when the row is a self-supervised task example. A batch of task examples carries a
    label or so per row against hundreds per sequence window, so at weight 1 its few labels move the
    shared weights as much as a whole batch of windows."""
    row = base if base is not None else [0.0 if tok == IGNORE_INDEX else 1.0 for tok in labels]
    return [w * task_weight for w in row] if task is not None else list(row)


def item_from_text_examples(split: Split, per_item: float, seed: int) -> list[Example]:
    """Every catalog item int(per_item) times, plus a seeded sample for the fraction."""
    items = list(range(len(split.catalog)))
    whole, frac = divmod(per_item, 1.0)
    chosen = items * int(whole) + random.Random(seed).sample(items, round(frac * len(items)))
    return [Example("", (), i, task="item_from_text") for i in sorted(chosen)]
