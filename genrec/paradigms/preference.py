"""Contrastive preference tuning: softmax-DPO over one positive item and sampled negatives.

For each target the policy's log-likelihood ratio to a frozen reference (the SFT adapter the run
starts from, train.init_adapter) is compared between the positive item and ``n`` sampled negatives
(S-DPO, Chen et al. 2024)::

    loss = -log sigmoid( -log sum_j exp( beta * (r(neg_j) - r(pos)) ) ),   r(i) = log pi(i) - log pi_ref(i)

With atomic ids an item's log-likelihood is one log-softmax entry over the item tokens, so the
reference log-likelihoods of every target's positive and negatives are computed once, before any
update, with the starting weights (no second model in memory) and looked up by dataset row.
Negatives are drawn per row from a generator seeded by (run.seed, row): the same on every epoch,
process and resume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from genrec.prompts.encoding import IGNORE_INDEX
from genrec.training.batching import collate, to_device
from genrec.training.loss import LabelLogits, LossTerm, label_logits


def sample_negatives(sequence: list[int], positives: int, n: int, num_items: int, seed: int, row: int) -> torch.Tensor:
    """[positives, n] catalog indices the user has not interacted with in ``sequence`` (uniform, with
    replacement across targets, without within one target)."""
    rng = np.random.default_rng([seed, row])
    allowed = np.setdiff1d(np.arange(num_items), np.asarray(sequence, dtype=np.int64))
    if len(allowed) < n:
        raise ValueError(f"train.negatives={n} but only {len(allowed)} items are not in the user's window")
    return torch.from_numpy(np.stack([rng.choice(allowed, size=n, replace=False) for _ in range(positives)]))


def softmax_dpo_loss(logits: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, reference: torch.Tensor,
                     beta: float) -> torch.Tensor:
    """``logits`` [positions, candidates]; ``targets`` [positions] and ``negatives`` [positions, n] index the
    candidates; ``reference`` [positions, 1 + n]: the reference's log-probabilities of the positive, then
    of each negative."""
    logp = torch.log_softmax(logits, dim=-1).gather(1, torch.cat([targets[:, None], negatives], 1))
    ratio = logp - reference.to(logp.device)
    margins = beta * (ratio[:, 1:] - ratio[:, :1])
    return -F.logsigmoid(-torch.logsumexp(margins, dim=1)).mean()


class SoftmaxDPO(LossTerm):
    """train.loss=softmax_dpo, in place of the cross-entropy: per-row negatives and reference
    log-probabilities of a training set, and the loss over them (rows carry their dataset ``row``)."""

    def __init__(self, beta: float, ce_weight: float, negatives: int, seed: int):
        self.beta, self.ce_weight, self.n, self.seed = beta, ce_weight, negatives, seed
        self.negatives: dict[int, torch.Tensor] = {}  # row → [targets, n] candidate indices
        self.reference: dict[int, torch.Tensor] = {}  # row → [targets, 1 + n] reference log-probabilities

    @torch.no_grad()
    def prepare(self, model, data, candidates: torch.Tensor, item_of_token: dict[int, int], rows: list[int],
                pad_id: int, autocast, batch_size: int, progress: bool = True, device=None) -> None:
        """Sample negatives for ``rows`` and score them with ``model`` (the reference weights, eval mode) on
        ``device`` (default: the CPU); the results are kept on the CPU and travel with each batch."""
        device = device or torch.device("cpu")
        candidates = candidates.to(device)
        token_of_item = {item: tok for tok, item in item_of_token.items()}
        position = {int(tok): i for i, tok in enumerate(candidates.tolist())}
        was_training = model.training
        model.eval()
        for lo in tqdm(range(0, len(rows), batch_size), desc="reference log-probs", disable=not progress, unit="batch"):
            chunk = rows[lo: lo + batch_size]
            part = data[chunk]
            batch_rows = []
            for row, ids, labels in zip(chunk, part["input_ids"], part["labels"]):
                targets = [tok for tok in labels if tok != IGNORE_INDEX]
                window = [item_of_token[tok] for tok in ids if tok in item_of_token]
                items = sample_negatives(window, len(targets), self.n, len(item_of_token), self.seed, row)
                self.negatives[row] = torch.tensor([[position[token_of_item[int(i)]] for i in r] for r in items.tolist()])
                batch_rows.append({"input_ids": ids, "labels": labels})
            batch = to_device(collate(batch_rows, pad_id), device)
            with autocast():  # a fresh context per batch
                logits, targets = label_logits(model, batch, candidates)
            logp = torch.log_softmax(logits.float(), dim=-1)
            start = 0
            for row in chunk:
                negs = self.negatives[row]
                end = start + len(negs)
                picked = torch.cat([targets[start:end, None], negs.to(device)], 1)
                self.reference[row] = logp[start:end].gather(1, picked).cpu()
                start = end
        model.train(was_training)

    def batch_inputs(self, rows: list[dict], pad_id: int) -> dict:
        """The rows' negatives and reference log-probabilities, per target in label order."""
        return {"negatives": torch.cat([self.negatives[r["row"]] for r in rows]),
                "reference": torch.cat([self.reference[r["row"]] for r in rows])}

    def __call__(self, scores: LabelLogits, batch: dict) -> torch.Tensor:
        logits, targets = scores.logits, scores.targets
        loss = softmax_dpo_loss(logits, targets, batch["negatives"], batch["reference"], self.beta)
        return loss + self.ce_weight * F.cross_entropy(logits, targets) if self.ce_weight else loss
