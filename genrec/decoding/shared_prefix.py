"""Beam steps that attend to one shared copy of each user's prompt.

With a standard KV cache every beam row carries its own copy of the prompt's keys
and values, and each beam step copies all of them twice (reorder + append): on
this CPU that was about half of the decoding time. Here the prompt K/V stay as
they came out of the prefill, one per user ([users, kv_heads, P, d]); each beam
row only keeps the few keys/values of the tokens it generated. A registered
attention function computes softmax(q·[K_prompt(user); K_suffix(row)]) without
materialising per-row prompt copies.

It plugs into any transformers model that dispatches attention through
``ALL_ATTENTION_FUNCTIONS`` (Llama, Qwen2, Mistral, Gemma, ...); `supports` says
whether a model qualifies, and decoding falls back to the plain cache otherwise.
"""

from __future__ import annotations

import contextlib

import torch

from genrec.model.attention_mask import sliding_window

NAME = "genrec_shared_prefix"
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, lambda *args, **kwargs: None)  # masking happens in _attention
    _registered = True


ARCHITECTURES = {"llama", "qwen2", "qwen3", "mistral", "gemma", "phi3", "olmo", "olmo2", "granite", "smollm3"}


def supports(model, length: int | None = None) -> bool:
    """Whether the shared-prefix attention is exact for this model over sequences of ``length`` tokens:
    plain softmax attention (no logit soft-capping, Gemma-2 style) that sees every earlier token (a
    sliding window shorter than the sequence would hide some of the prompt, which this function does
    not). Tested against the plain cache for Llama, Qwen2, Mistral and Gemma (tests/test_architectures.py)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", "") not in ARCHITECTURES:
        return False
    if getattr(config, "attn_logit_softcapping", None):
        return False
    window = sliding_window(config)
    return window is None or (length is not None and length <= window)


class PrefixState:
    """Per-layer prompt K/V (one per user) and per-row suffix K/V, plus the row → (user, slot) map."""

    def __init__(self, cache, prompt_mask: torch.Tensor, slots: int):
        # fp32 once here, so the per-step products read them without a conversion copy
        self.prompt_k = [layer.keys.float() for layer in cache.layers]
        self.prompt_v = [layer.values.float() for layer in cache.layers]
        self.prompt_bias = torch.zeros(prompt_mask.shape, dtype=torch.float32, device=prompt_mask.device)
        self.prompt_bias.masked_fill_(prompt_mask == 0, float("-inf"))  # left padding
        self.slots = slots
        self.suffix_k: list[torch.Tensor | None] = [None] * len(self.prompt_k)
        self.suffix_v: list[torch.Tensor | None] = [None] * len(self.prompt_k)
        self.row_user = self.row_slot = None

    def select(self, parent: torch.Tensor | None, row_user: torch.Tensor, row_slot: torch.Tensor) -> None:
        """New rows continue rows ``parent`` (None on the first step: no suffix yet)."""
        if parent is not None and self.suffix_k[0] is not None:
            self.suffix_k = [k[parent] for k in self.suffix_k]
            self.suffix_v = [v[parent] for v in self.suffix_v]
        self.row_user, self.row_slot = row_user, row_slot


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    state: PrefixState = kwargs["genrec_prefix_state"]
    layer = module.layer_idx
    # query [R, Hq, 1, d]; key/value [R, Hkv, 1, d] for the token each row just read
    if state.suffix_k[layer] is None:
        state.suffix_k[layer], state.suffix_v[layer] = key, value
    else:
        state.suffix_k[layer] = torch.cat([state.suffix_k[layer], key], dim=2)
        state.suffix_v[layer] = torch.cat([state.suffix_v[layer], value], dim=2)
    ks, vs = state.suffix_k[layer], state.suffix_v[layer]
    kp, vp = state.prompt_k[layer], state.prompt_v[layer]
    rows, heads, _, dim = query.shape
    users, kv_heads, plen, _ = kp.shape
    groups = heads // kv_heads
    scaling = scaling if scaling is not None else dim ** -0.5
    q = query.reshape(rows, kv_heads, groups, dim).float() * scaling
    u, s = state.row_user, state.row_slot

    grid_q = q.new_zeros((users, state.slots, kv_heads, groups, dim))
    grid_q[u, s] = q
    prompt_scores = torch.einsum("bwkgd,bkpd->bwkgp", grid_q, kp)[u, s]  # [R, Hkv, G, P]
    prompt_scores = prompt_scores + state.prompt_bias[u][:, None, None, :]
    suffix_scores = torch.einsum("rkgd,rktd->rkgt", q, ks.float())
    probs = torch.softmax(torch.cat([prompt_scores, suffix_scores], dim=-1), dim=-1)
    grid_p = probs.new_zeros((users, state.slots, kv_heads, groups, plen))
    grid_p[u, s] = probs[..., :plen]
    out = torch.einsum("bwkgp,bkpd->bwkgd", grid_p, vp)[u, s]
    out = out + torch.einsum("rkgt,rktd->rkgd", probs[..., plen:], vs.float())
    return out.reshape(rows, 1, heads, dim).to(query.dtype), None


@contextlib.contextmanager
def shared_prefix_attention(model):
    """Switch the model's attention to the shared-prefix function for the beam steps."""
    _register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
