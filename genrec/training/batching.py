"""Training batches: which rows go together each epoch, and how they are padded into tensors.

Batch order is a pure function of (seed, epoch), so a resumed run replays the exact batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import torch

from genrec.prompts.encoding import IGNORE_INDEX


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


def left_pad(rows: list[list], value, dtype=torch.long) -> torch.Tensor:
    """[len(rows), longest row]: each row right-aligned behind ``value``s, so that every row's last token
    sits in the last column (where generation continues and where decoding reads the next token)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = torch.tensor(r, dtype=dtype)
    return out


def prompt_inputs(prompts: list[list[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """The model inputs of a left-padded batch of token lists: ids, attention mask, and positions counted
    from each row's first real token (so that padding does not shift them)."""
    ids = left_pad(prompts, pad_id)
    mask = left_pad([[1] * len(p) for p in prompts], 0)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    return {k: v.to(device) for k, v in inputs.items()} if device is not None else inputs


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch plus ``loss_positions``: True where the next token is a completion label.

    Passed to the model as a boolean ``logits_to_keep``, it makes the model compute logits only for
    those positions (the prompt is ~95% of the tokens), gathered into one contiguous
    [positions, hidden] matrix: slicing a left-padded [batch, -k:] window instead hands the output
    layer a strided 3-D input, which on CPU runs as a batched matmul over a materialised copy of
    the whole output embedding per row (15% of a step, measured).

    Rows may carry ``weights`` (one per label, see ``genrec.causal.popularity.TargetWeights``): they become
    ``loss_weights``, aligned with ``labels``. What a loss term reads besides (e.g. S-DPO's negatives) it
    adds itself (``genrec.training.loss.training_batch``)."""
    batch = prompt_inputs([r["input_ids"] for r in rows], pad_id)
    labels = left_pad([r["labels"] for r in rows], IGNORE_INDEX)
    loss_positions = torch.zeros(labels.shape, dtype=torch.bool)
    loss_positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    batch.update(labels=labels, loss_positions=loss_positions)
    if "weights" in rows[0]:
        batch["loss_weights"] = left_pad([r["weights"] for r in rows], 0.0, torch.float32)
    return batch


def to_device(batch: dict, device) -> dict:
    """A collated batch, and the batches nested in it, on the device the model runs on (non-blocking from
    pinned memory on GPUs)."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
            for k, v in batch.items()}
