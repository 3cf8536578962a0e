"""Adapter weights and optimizer state when the launcher shards the training objective.

Under DDP (and a single process) every process holds the whole adapter and the whole optimizer state, so
process 0 saves its own copy. Under FSDP each process holds a shard of every parameter and of its optimizer
state: saving gathers the adapter's parameters (small: only the trainable ones, never the frozen base) and
the optimizer state as full tensors on process 0, and resuming hands process 0's copy back to every shard.
These gathers are collective: every process must call them, in the same order.

DeepSpeed ZeRO-2 partitions the optimizer state inside its engine: the adapter saves as under DDP (ZeRO-2
does not partition weights), but its optimizer state cannot be written to genrec's checkpoint format, so
a DeepSpeed run saves adapters without resumable state (``resumable``).
"""

from __future__ import annotations

import contextlib

import torch


def kind(accelerator) -> str | None:
    """'fsdp', 'deepspeed', or None (DDP / one process)."""
    from accelerate.utils import DistributedType

    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(accelerator.distributed_type)


def resumable(accelerator) -> bool:
    return kind(accelerator) != "deepspeed"


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # a DTensor shard under FSDP2
    return full.detach().cpu()


def adapter_weights(accelerator, peft_model) -> dict[str, torch.Tensor] | None:
    """The adapter's trainable parameters, whole, for ``save_pretrained(state_dict=...)`` on process 0
    (None elsewhere, and None when no gathering is needed: save_pretrained then reads the model)."""
    if kind(accelerator) != "fsdp":
        return None
    weights = {name: _full(p) for name, p in peft_model.named_parameters() if p.requires_grad}
    return weights if accelerator.is_main_process else None


def optimizer_state(accelerator, objective, optimizer) -> dict:
    """The optimizer state to save (whole, on process 0; under FSDP keyed by parameter name)."""
    if kind(accelerator) != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(objective, inner(optimizer),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(accelerator, objective, optimizer, state: dict) -> None:
    if kind(accelerator) != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # the loader builds empty state with a zero-gradient step first, which it skips when gradients exist
    inner(optimizer).zero_grad(set_to_none=True)
    set_optimizer_state_dict(objective, inner(optimizer), optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


@contextlib.contextmanager
def whole_model(accelerator, objective):
    """Under FSDP, the root's own parameters (embeddings, output layer, final norm) unsharded for a while, so
    that code may call the model's parts directly (validation); each layer still gathers its shards in its
    own forward. A no-op otherwise."""
    if kind(accelerator) != "fsdp" or not hasattr(objective, "unshard"):
        yield
        return
    objective.unshard()
    try:
        yield
    finally:
        objective.reshard()


def inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
