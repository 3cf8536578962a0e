"""The training loss: logits only where a completion label exists, and the named terms that read them.

The loop itself lives in ``recipes/finetune.py`` where it can be read in one go; ``TrainingObjective`` is
the one forward pass it runs per batch.

Extension point, a loss term (``LossTerm``): the loss is the sum of the run's terms, in order, each reading
the same label logits (``LabelLogits``) and the batch, plus whatever it asked to have collated into the
batch (``batch_inputs``). The core knows only ``CrossEntropy``; a variant's term lives in its module:
``genrec.causal.popularity.PopularityPriorLoss``, ``genrec.causal.counterfactual.CounterfactualLoss``,
``genrec.paradigms.preference.SoftmaxDPO``. ``recipes/finetune.py`` (``loss_terms``) picks them from the config.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from genrec.model.attention_mask import training_attention_mask
from genrec.model.output_head import OutputHead
from genrec.training.batching import collate


def label_logits(model, batch: dict[str, torch.Tensor], candidates: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 logits [positions, vocab or candidates], target index per position) at the label positions.

    ``groups`` (one per candidate, e.g. the code level of a semantic-id token): each position's softmax
    runs over the candidates of its target's group only."""
    keep = batch["loss_positions"]
    targets = batch["labels"][:, 1:][keep[:, :-1]]
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
              "attention_mask": training_attention_mask(model, batch["attention_mask"])}
    if candidates is None:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        return logits.float().reshape(-1, logits.shape[-1]), targets
    logits, index = candidate_logits(model, inputs, keep, candidates).float(), torch.searchsorted(candidates, targets)
    if groups is not None:
        groups = groups.to(logits.device)
        logits = logits.masked_fill(groups[None, :] != groups[index][:, None], float("-inf"))
    return logits, index


@dataclass(frozen=True)
class LabelLogits:
    """What every loss term reads: the fp32 logits at the batch's label positions (over the vocabulary or the
    item-softmax candidates), the target index of each, their loss weights (None = plain mean), and
    ``rescore``: the same logits for another batch (e.g. a counterfactual twin), under the same model."""
    logits: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor | None
    rescore: Callable[[dict], torch.Tensor]


class LossTerm:
    """One named part of the training loss."""

    def batch_inputs(self, rows: list[dict], pad_id: int) -> dict:
        """What this term reads from the batch besides the collated rows (a tensor, or a batch of its own)."""
        return {}

    def __call__(self, scores: LabelLogits, batch: dict) -> torch.Tensor:
        raise NotImplementedError


class CrossEntropy(LossTerm):
    """Mean cross-entropy over the completion tokens. With ``loss_weights`` in the batch each token's
    cross-entropy is multiplied by its weight before the mean (the weights are scaled to mean 1 over the
    data, not per batch)."""

    def __call__(self, scores: LabelLogits, batch: dict) -> torch.Tensor:
        return cross_entropy(scores.logits, scores.targets, scores.weights)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return F.cross_entropy(logits, targets)
    return (F.cross_entropy(logits, targets, reduction="none") * weights.to(logits.device)).mean()


def completion_loss(model, batch: dict, candidates: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                    terms: Sequence[LossTerm] = (CrossEntropy(),)) -> torch.Tensor:
    """The sum of ``terms`` over the completion tokens, computing logits only where a label exists.

    ``candidates`` (sorted token ids): the softmax runs over these tokens only — the atomic item tokens,
    i.e. exactly the distribution constrained decoding ranks — and every label must be one of them;
    ``groups`` (see ``label_logits``) splits it by code level."""
    logits, targets = label_logits(model, batch, candidates, groups)
    weights = batch["loss_weights"][:, 1:][batch["loss_positions"][:, :-1]] if "loss_weights" in batch else None
    scores = LabelLogits(logits, targets, weights, lambda other: label_logits(model, other, candidates)[0])
    loss = terms[0](scores, batch)
    for term in terms[1:]:
        loss = loss + term(scores, batch)
    return loss


def training_batch(rows: list[dict], pad_id: int, terms: Sequence[LossTerm]) -> dict:
    """The collated rows plus what each loss term reads besides them."""
    batch = collate(rows, pad_id)
    for term in terms:
        batch.update(term.batch_inputs(rows, pad_id))
    return batch


def candidate_logits(model, inputs: dict, keep: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[positions, candidates] logits. With a plain output layer only the candidates' rows are multiplied:
    for SmolLM2-135M the full 49,152 x 576 output layer is ~21% of the forward FLOPs at every position
    (against ~106M body weights), the 1,682 item rows <1%. The rows are the output layer's, with peft's
    trained item-token rows substituted (``genrec.model.output_head.output_rows``), tied to the input embedding
    or not."""
    head = OutputHead(model)
    return head.token_logits(head.states({**inputs, "use_cache": False}, keep)[0], candidates)


def training_loss(model, batch: dict, autocast, mixed: bool, candidates: torch.Tensor | None = None,
                  groups: torch.Tensor | None = None, terms: Sequence[LossTerm] = (CrossEntropy(),)) -> torch.Tensor:
    """``completion_loss`` under the run's mixed precision (``autocast``: a context manager).

    With ``mixed`` the adapter layers compute in the autocast dtype too: by default peft casts each
    adapter layer's input up to its fp32 weights, a full-size copy of every projection's input and
    fp32 adapter matmuls and adds (10% of a bf16 step, measured). Under autocast the weights are cast
    down instead (they are small) and still receive fp32 gradients: fp32 master weights, bf16 compute.
    """
    from peft.helpers import disable_input_dtype_casting

    with autocast, disable_input_dtype_casting(model, active=mixed):
        return completion_loss(model, batch, candidates, groups, terms)


class TrainingObjective(torch.nn.Module):
    """The training step's forward pass as one module: the adapted model, the run's loss terms and the
    item-softmax candidates and their levels.

    Why a module: DDP synchronises gradients, and FSDP / DeepSpeed gather shards, only for work done
    inside the forward of the module they wrap. The loss reaches into the model (its config, its
    decoder, its output rows), so the whole loss runs in this forward and ``accelerator.prepare`` wraps
    this module; ``.model`` is the peft model to save and evaluate. The candidates and levels are buffers,
    so they move to the accelerator's device with the module."""

    def __init__(self, model, terms: Sequence[LossTerm] = (CrossEntropy(),), candidates: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None, mixed: bool = False):
        super().__init__()
        self.model = model
        # FSDP's auto-wrap shards each of these layers separately (it reads them off the module it wraps)
        self._no_split_modules = getattr(model, "_no_split_modules", None)
        for name, value in (("candidates", candidates), ("groups", groups)):
            self.register_buffer(name, value, persistent=False)
        self.terms, self.mixed = list(terms), mixed

    def forward(self, batch: dict, autocast=None) -> torch.Tensor:
        """``batch``: ``training_batch`` of the rows, on the model's device."""
        return training_loss(self.model, batch, autocast or contextlib.nullcontext(), self.mixed, self.candidates,
                             self.groups, self.terms)
