"""Training batches: which rows go together each epoch, and how they are padded into tensors.

Batch order is a pure function of (seed, epoch), so a resumed run replays the exact batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import torch

from genrec.encoding import IGNORE_INDEX


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: int = 64) -> list[list[int]]:
    """Shuffled batches of similar length (less padding): shuffle, sort within chunks of
    ``group`` batches by length, cut into batches, shuffle the batch order."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    chunk = batch_size * group
    batches = []
    for lo in range(0, len(order), chunk):
        part = sorted(order[lo: lo + chunk], key=lambda i: lengths[i])
        batches.extend(part[j: j + batch_size] for j in range(0, len(part), batch_size))
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch plus ``loss_positions``: True where the next token is a completion label.

    Passed to the model as a boolean ``logits_to_keep``, it makes the model compute logits only for
    those positions (the prompt is ~95% of the tokens), gathered into one contiguous
    [positions, hidden] matrix: slicing a left-padded [batch, -k:] window instead hands the output
    layer a strided 3-D input, which on CPU runs as a batched matmul over a materialised copy of
    the whole output embedding per row (15% of a step, measured).

    Rows may carry ``weights`` (one per label, see ``genrec.popularity.TargetWeights``): they become
    ``loss_weights``, aligned with ``labels``."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, width - n:] = torch.tensor(r["input_ids"])
        labels[i, width - n:] = torch.tensor(r["labels"])
        mask[i, width - n:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    loss_positions = torch.zeros((len(rows), width), dtype=torch.bool)
    loss_positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels,
             "loss_positions": loss_positions}
    if "weights" in rows[0]:
        weights = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, r in enumerate(rows):
            weights[i, width - len(r["weights"]):] = torch.tensor(r["weights"], dtype=torch.float32)
        batch["loss_weights"] = weights
    if "negatives" in rows[0]:  # softmax-DPO (genrec.preference): per target, in label order
        batch["negatives"] = torch.cat([r["negatives"] for r in rows])
        batch["reference"] = torch.cat([r["reference"] for r in rows])
    return batch


def to_device(batch: dict[str, torch.Tensor] | None, device) -> dict[str, torch.Tensor] | None:
    """A collated batch on the device the model runs on (non-blocking from pinned memory on GPUs)."""
    if batch is None:
        return None
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
