"""The history's *effect*: counterfactual fine-tuning and contrastive decoding against a null history.

The counterfactual input is the same prompt with the history replaced by a fixed null string —
the template rendered with an empty history — so ``logits(history) - logits(null)`` is what the
history adds over the model's history-free prior (which at 135M parameters is mostly popularity).

- Training (``train.counterfactual_alpha``): loss = CE(logits_h) + alpha * CE(logits_h - logits_null).
  The null forward keeps its gradient: the model learns to put the evidence in the history part.
  With the target objective each row's null twin is the null prompt followed by the same
  completion, so the two have the same label positions in the same order. With the sequence
  objective every position predicts an item from a different prefix of the history; the null
  input for all of them is the empty-history prompt, one extra forward of a few tokens per batch.
- Decoding (``decode.contrastive_lambda``): score(item) = log p(item | h) - lambda * log p(item | null),
  applied inside the trie as a node prior (``null_node_prior``): a node's value is the null
  prompt's cumulative log-probability of the path to it, so each step adds
  ``-lambda * log p(token | null, prefix)`` — the same per-step decomposition beam search uses.
"""

from __future__ import annotations

import torch

from genrec.data.splits import Example
from genrec.decoding.search import item_token_logprobs
from genrec.items.index import ItemIndex
from genrec.prompts.encoding import IGNORE_INDEX
from genrec.training.batching import collate
from genrec.training.loss import LabelLogits, LossTerm, cross_entropy


class NullHistory:
    """Builds the null-history twin of a training batch."""

    def __init__(self, encoder, objective: str):
        self.encoder, self.objective = encoder, objective
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, user_id: str = "") -> list[int]:
        """The empty-history prompt (per user, in case a template shows the user id)."""
        if user_id not in self._prompts:
            self._prompts[user_id] = self.encoder.prompt_ids(Example(user_id, (), None))
        return self._prompts[user_id]

    def batch(self, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        """rows: {input_ids, labels, user_id} as collated for training."""
        if self.objective == "sequence":
            prompt = self.prompt(rows[0].get("user_id", ""))
            # one row whose only label position is the prompt's last token: its logits are the null prediction
            return collate([{"input_ids": prompt + [0], "labels": [IGNORE_INDEX] * len(prompt) + [0]}], pad_id)
        twins = []
        for r in rows:
            start = next(p for p, tok in enumerate(r["labels"]) if tok != IGNORE_INDEX)
            prompt = self.prompt(r.get("user_id", ""))
            twins.append({"input_ids": prompt + r["input_ids"][start:],
                          "labels": [IGNORE_INDEX] * len(prompt) + r["labels"][start:]})
        return collate(twins, pad_id)


class CounterfactualLoss(LossTerm):
    """train.counterfactual_alpha, added to the cross-entropy: ``alpha * CE(logits - null logits)``, the null
    logits from the batch's null-history twin (its own forward pass, which keeps its gradient). Weighted
    like the cross-entropy when the batch carries loss weights; no popularity prior (it would cancel)."""

    def __init__(self, alpha: float, null_history: NullHistory):
        self.alpha, self.null_history = alpha, null_history

    def batch_inputs(self, rows: list[dict], pad_id: int) -> dict:
        return {"null_history": self.null_history.batch(rows, pad_id)}

    def __call__(self, scores: LabelLogits, batch: dict) -> torch.Tensor:
        null_logits = scores.rescore(batch["null_history"])
        return self.alpha * cross_entropy(scores.logits - null_logits, scores.targets, scores.weights)


def null_node_prior(model, index: ItemIndex, prompt: list[int], batch_size: int = 64) -> torch.Tensor:
    """[nodes]: log p(path to the node | null prompt), by teacher forcing every item once (root = 0)."""
    values = torch.zeros(index.num_nodes)
    for item, logp in item_token_logprobs(model, prompt, index, list(range(index.num_items)), batch_size):
        values[index.item_path[item, : len(logp)]] = logp.float().cumsum(0)  # items sharing a prefix agree on its nodes
    return values
