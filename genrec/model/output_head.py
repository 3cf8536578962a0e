"""The output layer as genrec reads it: item rows for the item softmax, fp32 log-probabilities for decoding.

Where an architecture's logits are exactly ``output_layer(last hidden state)`` (``plain_head``), genrec
runs the model body on its own and applies the output layer itself (``OutputHead``, the one place that
decides), for three reasons:

- training with an item softmax multiplies only the candidates' rows (``output_rows``), not the whole
  vocabulary (for SmolLM2-135M the full output layer is ~21% of the forward FLOPs);
- decoding computes the logits in fp32 even when the body runs in bf16 (``FP32Head``): a bf16 logit
  of magnitude 20 sits on a 0.125 grid, and summed over a title's tokens that noise reorders items;
- a yes/no answer's score is one fp32 dot product with the difference of the two rows, not the difference
  of two bf16 logits (whose ~0.1 resolution at typical magnitudes ties many scores).

Both read peft's trained item-token rows (``trainable_token_indices``) of the *active* adapter, in the
input embedding and, when it is not tied to it, in the output layer, so they work on a merged model,
on an adapter left unmerged (quantized bases), and on one base carrying several adapters (ensembles).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# architectures whose logits are exactly lm_head(last hidden state): no soft-capping, scaling or bias
PLAIN_HEAD_TYPES = {"llama", "qwen2", "qwen3", "mistral", "gemma", "olmo", "olmo2", "phi3", "smollm3"}


def token_layer(module):
    """peft's TrainableTokensLayer behind ``module`` (its wrapper or itself), else None."""
    from peft.tuners.trainable_tokens import TrainableTokensLayer

    if isinstance(module, TrainableTokensLayer):
        return module
    layer = getattr(module, "token_adapter", None)
    return layer if isinstance(layer, TrainableTokensLayer) else None


def plain_head(model) -> bool:
    """True when the model's logits are its output layer applied to the last hidden state, unchanged."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", "") not in PLAIN_HEAD_TYPES or getattr(config, "final_logit_softcapping", None):
        return False
    head = model.get_output_embeddings()
    layer = token_layer(head)
    base = layer.base_layer if layer is not None else head
    return type(base) is torch.nn.Linear and base.bias is None


def _trained_rows(layer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(token ids, rows) of the active adapter's trained tokens in a TrainableTokensLayer (None when off)."""
    if layer is None or layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.trainable_tokens_delta]
    if not active:
        return None
    name = active[0]  # genrec activates one adapter at a time (ensembles switch between members)
    weight = layer.base_layer.weight
    index = torch.as_tensor(layer.token_indices[name], dtype=torch.long, device=weight.device)
    return index, layer.trainable_tokens_delta[name]


def output_rows(model, tokens: torch.Tensor) -> torch.Tensor:
    """[len(tokens), hidden]: the output layer's rows of these token ids, the active adapter's trained rows
    substituted (differentiable with respect to them)."""
    head = model.get_output_embeddings()
    layer = token_layer(head)
    if layer is None:
        return head.weight[tokens]
    base = layer.base_layer.weight
    rows = base[tokens]
    trained = _trained_rows(layer)
    if trained is None:
        return rows
    index, delta = trained
    where = torch.full((base.shape[0],), -1, dtype=torch.long, device=base.device)
    where[index] = torch.arange(index.numel(), device=base.device)
    slot = where[tokens]
    return torch.where((slot >= 0)[:, None], delta[slot.clamp(min=0)].to(rows.dtype), rows)


class FP32Head:
    """fp32 logits of a plain output layer from hidden states: one fp32 copy of the (frozen) base rows,
    made once, and the active adapter's trained rows read at every call (they differ per member)."""

    def __init__(self, model):
        head = model.get_output_embeddings()
        self.layer = token_layer(head)
        base = self.layer.base_layer if self.layer is not None else head
        self.weight = base.weight.detach().float()  # no copy when already fp32

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()
        with torch.autocast(hidden.device.type, enabled=False):  # under autocast F.linear would run in bf16
            logits = F.linear(hidden, self.weight)
            trained = _trained_rows(self.layer)
            if trained is not None:
                index, delta = trained
                logits[..., index] = F.linear(hidden, delta.detach().float())
        return logits


class OutputHead:
    """Logits as genrec reads them, with one rule for where it applies the output layer itself: when
    ``plain_head(model)`` the body runs alone and genrec multiplies its last hidden state by the rows it
    needs; otherwise the model's own logits are read. ``states`` runs the forward pass and picks the
    positions; the other methods turn those states into what a caller needs."""

    def __init__(self, model):
        self.model = model
        self.body = model.get_decoder() if plain_head(model) else None
        self._fp32 = None  # FP32Head, made on first use (then kept: one per model for a whole evaluation)

    def states(self, inputs: dict, at):
        """(states at positions ``at``, the forward pass's output, e.g. for its KV cache): the body's last
        hidden states, or the model's logits where the output layer is not genrec's. ``at``: a boolean
        [batch, sequence] mask (states [positions, ...]) or an index of the sequence dimension (-1, a slice,
        a tensor of positions; states [batch, ...])."""
        mask = isinstance(at, torch.Tensor) and at.dtype == torch.bool
        if self.body is not None:
            out = self.body(**inputs)
            return (out.last_hidden_state[at] if mask else out.last_hidden_state[:, at]), out
        out = self.model(**inputs, logits_to_keep=at if mask else 1 if isinstance(at, int) and at == -1 else 0)
        return (out.logits.reshape(-1, out.logits.shape[-1]) if mask else out.logits[:, at]), out

    def fp32_logits(self, states: torch.Tensor) -> torch.Tensor:
        """[..., vocab] fp32 logits (decoding)."""
        if self.body is None:
            return states.float()
        if self._fp32 is None:
            self._fp32 = FP32Head(self.model)
        return self._fp32(states)

    def token_logits(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[..., len(tokens)] logits of these token ids in the compute dtype, differentiable with respect to the
        adapter's trained rows (training's item softmax): only these tokens' output rows are multiplied."""
        if self.body is None:
            return states[..., tokens]
        return states @ output_rows(self.model, tokens).T

    def logit_margin(self, states: torch.Tensor, first: int, second: int) -> torch.Tensor:
        """[...] fp32 logit of token ``first`` minus that of ``second`` (a yes/no answer's score)."""
        if self.body is None:
            logits = states.float()
            return logits[..., first] - logits[..., second]
        rows = output_rows(self.model, torch.tensor([first, second], device=states.device)).detach().float()
        return states.float() @ (rows[0] - rows[1])
