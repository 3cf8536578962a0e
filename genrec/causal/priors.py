"""The causal variant's decoding prior: interventions on popularity applied inside the trie search.

Three terms, each a value per trie node whose leaf-minus-root the search adds to an item's score (where it
can change which beams survive, unlike a re-ranking of the finished list):

- ``decode.popularity_gamma`` * log of the training popularity (count + 1) under the node (PD's popularity
  term at inference; a negative gamma is a popularity penalty);
- ``-decode.contrastive_lambda`` * log p(path to the node | the empty-history prompt): contrastive decoding
  against the null history (genrec.causal.counterfactual);
- the propensity bonus of ``decode.propensity_mix`` (``CausalPriors.propensity_bonus``).

``CausalPriors`` is the ``genrec.decoding.options.DecodingPrior`` a ``Recommender`` asks by default.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from genrec.causal.counterfactual import null_node_prior
from genrec.causal.popularity import smoothed
from genrec.data.splits import Example
from genrec.decoding.options import DecodeOptions
from genrec.evaluation.bias import propensity_weights


class CausalPriors:
    """The causal node prior of one model and setup: each term is computed once, their sum once per setting."""

    def __init__(self, model, setup):
        self.model, self.setup = model, setup
        self._inverse_propensity: dict[float, np.ndarray] = {}  # per eval.ips_clip
        self._last: tuple[tuple, torch.Tensor | None] | None = None  # (the values it was built from, the prior)

    @functools.cached_property
    def popularity_log_mass(self) -> torch.Tensor:
        """log of the training popularity (count + 1) under each trie node."""
        return self.setup.index.log_mass(smoothed(self.setup.split.train_popularity()))

    @functools.cached_property
    def null_log_prob(self) -> torch.Tensor:
        """log p(path to each trie node | the prompt with an empty history), for contrastive decoding."""
        return null_node_prior(self.model, self.setup.index, self.setup.encoder.prompt_ids(Example("", (), None)))

    def inverse_propensity(self, clip: float) -> np.ndarray:
        """Per item: the inverse training propensity clipped at ``clip`` (computed once per clip)."""
        if clip not in self._inverse_propensity:
            self._inverse_propensity[clip] = propensity_weights(self.setup.split.train_popularity(), clip)
        return self._inverse_propensity[clip]

    def propensity_bonus(self, beta: float, clip: float, temperature: float = 1.0) -> torch.Tensor:
        """Node prior whose leaf-minus-root is T * log(1 + beta * w(item)) - const, w the inverse training
        propensity clipped at ``clip``, as the debiased metrics weigh items (genrec.evaluation.bias), T the
        ``temperature``.

        Why this form: expected NDCG + c * IPS-weighted NDCG of a ranking sums p(i | h) * (1 + c' * w(i)) *
        gain(rank of i) over items, so sorting by that product is the best ranking for the mixed objective
        when the model's p is right (beta = 0: plain NDCG; beta large: p(i | h) * w(i), the debiased one).
        A popularity penalty (popularity_gamma < 0) is not of this form: it also reorders the head, where
        1 + beta * w barely differs between items.

        Why T: the argument needs p calibrated, and a product of experts (the LLM's log p plus SASRec's) is
        over-confident. With p = softmax(score / T), sorting by p * (1 + beta * w) is sorting by
        score + T * log(1 + beta * w); T is fitted on validation (``genrec.causal.calibration``)."""
        return temperature * self.setup.index.max_below(np.log1p(beta * self.inverse_propensity(clip)))

    def node_prior(self, options: DecodeOptions) -> torch.Tensor | None:
        """popularity_gamma * popularity_log_mass - contrastive_lambda * null_log_prob
        + propensity_bonus(propensity_mix, ips_clip, propensity_temperature), on the model's device; None when
        every term is off.
        The last one is kept: a ranking asks once per call, and the same setting again costs no copy."""
        gamma, lam, beta = options.popularity_gamma, options.contrastive_lambda, options.propensity_mix
        temperature = options.propensity_temperature
        key = (gamma, lam, beta, (options.ips_clip, temperature) if beta else None)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        parts = (([gamma * self.popularity_log_mass] if gamma else []) + ([-lam * self.null_log_prob] if lam else [])
                 + ([self.propensity_bonus(beta, options.ips_clip, temperature)] if beta else []))
        prior = sum(parts).to(next(self.model.parameters()).device) if parts else None
        self._last = (key, prior)
        return prior
