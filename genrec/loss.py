"""The training loss: cross-entropy on the completion tokens, computing logits only where a label exists.

The loop itself lives in ``recipes/finetune.py`` where it can be read in one go; ``TrainingObjective`` is
the one forward pass it runs per batch.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from genrec.output_head import OutputHead


def label_logits(model, batch: dict[str, torch.Tensor], candidates: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 logits [positions, vocab or candidates], target index per position) at the label positions.

    ``groups`` (one per candidate, e.g. the code level of a semantic-id token): each position's softmax
    runs over the candidates of its target's group only."""
    keep = batch["loss_positions"]
    targets = batch["labels"][:, 1:][keep[:, :-1]]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if candidates is None:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        return logits.float().reshape(-1, logits.shape[-1]), targets
    logits, index = candidate_logits(model, inputs, keep, candidates).float(), torch.searchsorted(candidates, targets)
    if groups is not None:
        groups = groups.to(logits.device)
        logits = logits.masked_fill(groups[None, :] != groups[index][:, None], float("-inf"))
    return logits, index


def completion_loss(model, batch: dict[str, torch.Tensor], candidates: torch.Tensor | None = None,
                    null_batch: dict[str, torch.Tensor] | None = None, alpha: float = 0.0,
                    groups: torch.Tensor | None = None, preference=None,
                    prior: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over completion tokens, computing logits only where a label exists.

    ``candidates`` (sorted token ids): the softmax runs over these tokens only — the atomic item tokens,
    i.e. exactly the distribution constrained decoding ranks — and every label must be one of them.
    With ``loss_weights`` in the batch each token's cross-entropy is multiplied by its weight before the
    mean (the weights are scaled to mean 1 over the data, not per batch). With ``alpha`` > 0 the
    counterfactual term ``alpha * CE(logits - null logits)`` is added, the null logits coming from
    ``null_batch`` (``genrec.counterfactual.NullHistory``: one row per row, or one row for all).
    ``preference`` (``genrec.preference.SoftmaxDPO``, with ``negatives``/``reference`` in the batch)
    replaces the cross-entropy by its contrastive loss. ``prior`` (one value per candidate, e.g.
    ``genrec.popularity.candidate_prior``) is added to the logits of the cross-entropy, not to the
    counterfactual difference (it would cancel there)."""
    logits, targets = label_logits(model, batch, candidates, groups)
    if preference is not None:
        return preference.loss(logits, targets, batch)
    weights = batch["loss_weights"][:, 1:][batch["loss_positions"][:, :-1]] if "loss_weights" in batch else None
    loss = _cross_entropy(logits if prior is None else logits + prior.to(logits.device), targets, weights)
    if alpha:
        null_logits, _ = label_logits(model, null_batch, candidates)
        loss = loss + alpha * _cross_entropy(logits - null_logits, targets, weights)
    return loss


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return F.cross_entropy(logits, targets)
    return (F.cross_entropy(logits, targets, reduction="none") * weights.to(logits.device)).mean()


def candidate_logits(model, inputs: dict, keep: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[positions, candidates] logits. With a plain output layer only the candidates' rows are multiplied:
    for SmolLM2-135M the full 49,152 x 576 output layer is ~21% of the forward FLOPs at every position
    (against ~106M body weights), the 1,682 item rows <1%. The rows are the output layer's, with peft's
    trained item-token rows substituted (``genrec.output_head.output_rows``), tied to the input embedding
    or not."""
    head = OutputHead(model)
    return head.token_logits(head.states({**inputs, "use_cache": False}, keep)[0], candidates)


def training_loss(model, batch: dict[str, torch.Tensor], autocast, mixed: bool,
                  candidates: torch.Tensor | None = None, null_batch: dict | None = None, alpha: float = 0.0,
                  groups: torch.Tensor | None = None, preference=None,
                  prior: torch.Tensor | None = None) -> torch.Tensor:
    """``completion_loss`` under the run's mixed precision (``autocast``: a context manager).

    With ``mixed`` the adapter layers compute in the autocast dtype too: by default peft casts each
    adapter layer's input up to its fp32 weights, a full-size copy of every projection's input and
    fp32 adapter matmuls and adds (10% of a bf16 step, measured). Under autocast the weights are cast
    down instead (they are small) and still receive fp32 gradients: fp32 master weights, bf16 compute.
    """
    from peft.helpers import disable_input_dtype_casting

    with autocast, disable_input_dtype_casting(model, active=mixed):
        return completion_loss(model, batch, candidates, null_batch, alpha, groups, preference, prior)


class TrainingObjective(torch.nn.Module):
    """The training step's forward pass as one module: the adapted model plus what the run's loss needs
    (item-softmax candidates and their levels, the popularity prior, the counterfactual weight, S-DPO).

    Why a module: DDP synchronises gradients, and FSDP / DeepSpeed gather shards, only for work done
    inside the forward of the module they wrap. The loss reaches into the model (its config, its
    decoder, its output rows), so the whole loss runs in this forward and ``accelerator.prepare`` wraps
    this module; ``.model`` is the peft model to save and evaluate. The tensors are buffers, so they
    move to the accelerator's device with the module."""

    def __init__(self, model, candidates: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                 prior: torch.Tensor | None = None, alpha: float = 0.0, preference=None, mixed: bool = False):
        super().__init__()
        self.model = model
        # FSDP's auto-wrap shards each of these layers separately (it reads them off the module it wraps)
        self._no_split_modules = getattr(model, "_no_split_modules", None)
        for name, value in (("candidates", candidates), ("groups", groups), ("prior", prior)):
            self.register_buffer(name, value, persistent=False)
        self.alpha, self.preference, self.mixed = alpha, preference, mixed

    def forward(self, batch: dict[str, torch.Tensor], null_batch: dict[str, torch.Tensor] | None = None,
                autocast=None) -> torch.Tensor:
        return training_loss(self.model, batch, autocast or contextlib.nullcontext(), self.mixed, self.candidates,
                             null_batch, self.alpha, self.groups, self.preference, self.prior)
