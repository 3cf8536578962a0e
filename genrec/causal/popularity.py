"""Item popularity as a confounder: training weights, the decoding prior and propensities.

Everything here is computed from the *training part* of the split only
(``Split.train_popularity``): the validation and test items of a user never
change a weight, a prior or a propensity.

- Training (deconfounding, PD-style): each target's loss is weighted by its clipped inverse
  popularity, so the model is not rewarded for "recommend what is popular".
- Training with the popularity term (PD proper, ``train.popularity_prior``): the item softmax is
  trained on ``logit + beta * log pop(item)``, so popularity is explained by that fixed term and the
  model's own logits are left with the rest; decoding them alone (gamma = 0) is deconfounded.
- Decoding (adjustment, PDA-style): ``ItemIndex.log_mass`` gives each trie node the log of the
  popularity mass under it; adding ``gamma * (log W(child) - log W(node))`` at every step sums
  over an item's path to exactly ``gamma * log pop(item) - gamma * log W(root)``.
- Evaluation: propensities for IPS/SNIPS and the intervened test (``genrec.evaluation.bias``).

Counts are smoothed by +1 so an item never seen in training has a finite log and weight.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.prompts.encoding import IGNORE_INDEX
from genrec.training.loss import LabelLogits, LossTerm, cross_entropy


def smoothed(popularity: np.ndarray) -> np.ndarray:
    return np.asarray(popularity, dtype=np.float64) + 1.0


def inverse_popularity_weights(popularity: np.ndarray, power: float = 1.0, clip: float = 10.0) -> np.ndarray:
    """Per-item loss weight ``(pop + 1) ** -power``, scaled to mean 1 over the training interactions
    (so the learning rate keeps its meaning), then capped at ``clip`` (a handful of rare items would
    otherwise dominate the gradient: PD's clipped inverse propensity)."""
    pop = np.asarray(popularity, dtype=np.float64)
    raw = smoothed(pop) ** -power
    total = pop.sum()
    mean = (raw * pop).sum() / total if total else raw.mean()
    return np.minimum(raw / mean, clip)


def candidate_prior(popularity: np.ndarray, item_tokens: list[int], candidates, strength: float):
    """``strength * log(count + 1)`` of each candidate token's item, in ``candidates``' order (the
    columns of the item softmax): the popularity term added to the logits while training."""
    log_pop = dict(zip(item_tokens, np.log(smoothed(popularity))))
    return torch.tensor([strength * log_pop[int(tok)] for tok in candidates], dtype=torch.float32)


class PopularityPriorLoss(LossTerm):
    """train.popularity_prior, in place of the plain cross-entropy: the cross-entropy of ``logit + prior``
    (``candidate_prior``, one value per item-softmax column), so that the fixed term explains popularity.
    Weighted like the plain one when the batch carries loss weights."""

    def __init__(self, prior: torch.Tensor):
        self.prior = prior

    def __call__(self, scores: LabelLogits, batch: dict) -> torch.Tensor:
        return cross_entropy(scores.logits + self.prior.to(scores.logits.device), scores.targets, scores.weights)


class TargetWeights:
    """Loss weight of every label position: the weight of the item that position predicts.

    With atomic ids a label *is* an item token (this covers the sequence objective, where every item
    of a window is a target); otherwise every completion token of a row belongs to its one target."""

    def __init__(self, item_weights: np.ndarray, item_tokens: list[int] | None = None):
        self.item_weights = np.asarray(item_weights, dtype=np.float64)
        self.by_token = {tok: float(w) for tok, w in zip(item_tokens, self.item_weights)} if item_tokens else None

    def row(self, labels: list[int], target: int) -> list[float]:
        if self.by_token is not None:
            return [self.by_token.get(tok, 1.0) if tok != IGNORE_INDEX else 0.0 for tok in labels]
        weight = float(self.item_weights[target])
        return [weight if tok != IGNORE_INDEX else 0.0 for tok in labels]


def training_weights(cfg, split, item_tokens: list[int] | None) -> TargetWeights | None:
    """The run's per-target loss weights (train.target_weighting), or None for a plain mean."""
    if cfg.train.target_weighting == "none":
        return None
    weights = inverse_popularity_weights(split.train_popularity(), cfg.train.weight_power, cfg.train.weight_clip)
    return TargetWeights(weights, item_tokens)
