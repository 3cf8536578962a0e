"""What a ranking is told from outside: its settings (``DecodeOptions``) and the prior it adds inside the trie
(``DecodingPrior``).

Why a value and not the config: ranking used to read ``cfg.decode.*`` at call time, so a caller that wanted
another setting (a benchmark's grid, a narrower beam) changed the live config in place and every later
reader saw it. ``DecodeOptions`` is built once from the config and is frozen; a caller that varies decoding
passes ``dataclasses.replace(options, ...)`` and the config stays as loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from genrec.config import Config


@dataclass(frozen=True)
class DecodeOptions:
    """Every setting ``Recommender.rank`` reads (the decode section, plus the two elsewhere that shape a ranking).

    ``decode.members`` is not here: it chooses which adapters ``Recommender.load`` loads, not how they rank."""
    num_beams: int  # decode.num_beams: beam width of the trie-constrained search (raised to k when smaller)
    length_penalty: float  # decode.length_penalty: score = sum log p / len**length_penalty
    batch_users: int  # decode.batch_users: users ranked together in one forward
    exclude_seen: bool  # decode.exclude_seen: callers leave each user's history items out of its ranking
    trie_normalize: bool  # decode.trie_normalize: each step renormalised over the trie node's children
    popularity_gamma: float  # decode.popularity_gamma: prior gamma * log(training count + 1)
    contrastive_lambda: float  # decode.contrastive_lambda: prior -lambda * log p(item | null history)
    propensity_mix: float  # decode.propensity_mix: prior log(1 + beta * w(item))
    ips_clip: float  # eval.ips_clip: the cap on w(item), the inverse propensity propensity_mix weighs by
    rationale_max_new_tokens: int  # reason.max_new_tokens: most tokens of a rationale written before the item
    sasrec_weight: float = 0.0  # decode.sasrec_weight: add w * log p_SASRec(item | history) to each item's score
    propensity_temperature: float = 1.0  # decode.propensity_temperature: the mix's p is softmax(score / T)

    @classmethod
    def from_config(cls, cfg: Config) -> DecodeOptions:
        d = cfg.decode
        return cls(num_beams=d.num_beams, length_penalty=d.length_penalty, batch_users=d.batch_users,
                   exclude_seen=d.exclude_seen, trie_normalize=d.trie_normalize, popularity_gamma=d.popularity_gamma,
                   contrastive_lambda=d.contrastive_lambda, propensity_mix=d.propensity_mix,
                   ips_clip=cfg.eval.ips_clip, rationale_max_new_tokens=cfg.reason.max_new_tokens,
                   sasrec_weight=d.sasrec_weight, propensity_temperature=d.propensity_temperature)


class DecodingPrior(Protocol):
    """The extension point for interventions inside the search: a value per trie node whose leaf-minus-root is
    added to an item's score (``genrec.decoding.search.constrained_topk``'s ``node_prior``). The ranking asks for it
    without knowing what it holds (the causal variant: ``genrec.causal.priors.CausalPriors``)."""

    def node_prior(self, options: DecodeOptions) -> torch.Tensor | None:
        """[trie nodes] on the model's device for these options; None when they ask for no prior."""
