"""The attention mask of a left-padded training batch, with no query row that sees nothing.

Under a causal mask with left padding, each padding position's query may attend to no key at all (every
key up to it is padding). Transformers (5.18 on) hands such rows to torch's scaled_dot_product_attention
as they are. The CPU kernels return zeros and zero gradients there, but on an H200 (torch 2.11, CUDA 13,
bf16) the backward pass gave NaN: the first step's loss was finite and every later one NaN, on every
title batch that had padding, while eager attention trained. benchmarks/gpu_check.py found this
(BENCHMARKS.md, "The GPU check on an H200").

The fix: each padding query also sees itself, the one key that never reaches a real position, since every
real query masks padding keys. Real rows, and so the loss and its gradients, are unchanged, and every row
has a key to attend to on any kernel.
"""

from __future__ import annotations

import torch


def sliding_window(config) -> int | None:
    """The attention window of any layer that has one, else None (Qwen2's is off unless use_sliding_window)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    return None if getattr(config, "use_sliding_window", None) is False else window


def training_attention_mask(model, mask: torch.Tensor) -> torch.Tensor:
    """The mask to give ``model`` for a left-padded batch whose 2-D ``mask`` marks real tokens (1) and padding (0).

    sdpa with padding: a [batch, 1, width, width] boolean mask, causal over real keys, each padding query
    also seeing itself. Otherwise ``mask`` itself: no padding (nothing to fix), eager attention (its
    softmax over all-masked scores is finite), flash attention (it drops padding and takes no 4-D mask),
    or a sliding window narrower than the batch (a 4-D mask would replace the window that transformers
    builds; such rows keep the risk, which only arises on long batches of such models)."""
    config = model.config
    width = mask.shape[-1]
    window = sliding_window(config)
    if config._attn_implementation != "sdpa" or bool(mask.all()) or (window is not None and width > window):
        return mask
    real = mask.bool()
    positions = torch.arange(width, device=mask.device)
    causal = positions[None, :] <= positions[:, None]  # [query, key]
    itself = torch.eye(width, dtype=torch.bool, device=mask.device)
    visible = causal[None] & (real[:, None, :] | itself[None])
    return visible[:, None]
