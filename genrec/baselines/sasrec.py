"""SASRec (Kang & McAuley, 2018): the self-attentive sequential baseline, trained and ranked here.

The model reads a user's most recent ``max_len`` items (item embedding + learned
position embedding, causal transformer blocks) and scores the whole catalog by
the dot product of its last hidden state with the (tied) item embeddings.

Training uses full-softmax cross-entropy over the catalog at every position of
each user's *training part*. Sequences longer than ``max_len + 1`` are cut into
windows that end at the last training item and step back ``stride`` items at a
time; each training item is the target in exactly one window (the latest that
holds it with at least ``max_len - stride`` items of context, or all the context
there is). Overlapping windows rather than the most recent ``max_len + 1`` items
only: ml-100k users average ~100 interactions, so keeping only the latest 51
would throw away half of the training data; overlap rather than disjoint chunks:
a disjoint chunk's first targets would be predicted from almost no context,
unlike at evaluation time, where the model always reads up to ``max_len`` items.

Hyper-parameters are ``genrec.config.SASRecConfig`` (the ``sasrec`` config
section); ranking follows the evaluation protocol (docs/protocol.md): seen items are
excluded when the caller asks, and ``genrec.evaluation.protocol.score`` scores the lists.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import SASRecConfig
from genrec.data.catalog import Catalog
from genrec.data.splits import Case, Split, sequence_windows
from genrec.decoding.search import top_k_unseen
from genrec.errors import CheckpointError, DataError
from genrec.evaluation.protocol import as_cases, score_cases
from genrec.io import atomic_path

log = logging.getLogger("genrec")

IGNORE = -100  # target value that carries no loss (padding, or a target counted in another window)
FORMAT = "genrec-sasrec-1"
NOT_MODEL_SETTINGS = ("retrain", "eval_batch")  # recipe switches that don't change what is trained


class Block(nn.Module):
    """One transformer block: causal self-attention, then a GELU feed-forward; post- or pre-LN."""

    def __init__(self, p: SASRecConfig):
        super().__init__()
        self.norm_first = p.norm_first
        self.attn = nn.MultiheadAttention(p.hidden, p.heads, dropout=p.attn_dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(p.hidden, p.inner), nn.GELU(), nn.Linear(p.inner, p.hidden))
        self.norm1 = nn.LayerNorm(p.hidden, eps=p.layer_norm_eps)
        self.norm2 = nn.LayerNorm(p.hidden, eps=p.layer_norm_eps)
        self.drop = nn.Dropout(p.hidden_dropout)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self._attend(self.norm1(x), mask))
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self._attend(x, mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class SASRec(nn.Module):
    """Input: [B, L] item ids (catalog index + 1), right-padded with 0. Output: [B, L, hidden].

    Right padding with a causal mask means a real position never attends to a pad
    (pads come after it), so no key-padding mask is needed, and no attention row
    is ever fully masked (which would give NaN that leaks through 0 * NaN).
    Positions count from the first item the model reads, as at evaluation time.
    """

    def __init__(self, n_items: int, p: SASRecConfig):
        super().__init__()
        self.n_items, self.max_len = n_items, p.max_len
        self.item_emb = nn.Embedding(n_items + 1, p.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(p.max_len, p.hidden)
        self.emb_norm = nn.LayerNorm(p.hidden, eps=p.layer_norm_eps)  # post-LN: on embeddings; pre-LN: after the last block
        self.drop = nn.Dropout(p.hidden_dropout)
        self.blocks = nn.ModuleList(Block(p) for _ in range(p.layers))
        self.norm_first = p.norm_first
        self.apply(lambda m: _init(m, p.init_std))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence of {length} items; this model reads at most {self.max_len}")
        x = self.item_emb(seq) + self.pos_emb(torch.arange(length, device=seq.device))
        x = self.drop(x if self.norm_first else self.emb_norm(x))
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).triu(1)  # True = may not attend
        for block in self.blocks:
            x = block(x, causal)
        return self.emb_norm(x) if self.norm_first else x

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., n_items] logits; column i is catalog index i (the padding row is skipped)."""
        return hidden @ self.item_emb.weight[1:].T


def _init(module: nn.Module, std: float) -> None:
    # RecBole's (and BERT's) init: N(0, std) weights and embeddings, zero biases, unit LayerNorm
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):  # its q/k/v projection is a bare parameter, not a Linear
        nn.init.normal_(module.in_proj_weight, std=std)
        nn.init.zeros_(module.in_proj_bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def training_windows(split: Split, max_len: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, max_len] inputs (ids = index + 1, right-padded 0) and targets (catalog index or IGNORE).

    The windows are ``genrec.data.splits.sequence_windows`` — the same ones the LLM's sequence
    objective trains on — so each window counts only the targets no later window counts.
    """
    inputs, targets = [], []
    for ex in sequence_windows(split, max_len, stride):
        window = ex.sequence
        x = [i + 1 for i in window[:-1]]
        y = [t if j + 1 >= ex.sequence_from else IGNORE for j, t in enumerate(window[1:])]
        inputs.append(x + [0] * (max_len - len(x)))
        targets.append(y + [IGNORE] * (max_len - len(y)))
    return torch.tensor(inputs, dtype=torch.long).reshape(-1, max_len), torch.tensor(targets, dtype=torch.long).reshape(-1, max_len)


@dataclass
class FitResult:
    epochs: int  # epochs trained (including the ones after the best, up to the stop)
    best_epoch: int
    best_valid_ndcg10: float
    seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: loss, validation NDCG@10


def fit(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, p: SASRecConfig, seed: int,
        validate: Callable[[SASRec], float]) -> FitResult:
    """Adam on full-softmax cross-entropy; after each epoch ``validate(model)`` (higher is better) drives
    early stopping (``p.patience`` epochs without a strict improvement); the best weights are restored."""
    if not (targets != IGNORE).any():
        raise DataError("SASRec has nothing to learn: every user's training part has fewer than 2 items")
    generator = torch.Generator().manual_seed(seed)  # shuffling is reproducible apart from dropout's global RNG
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    best, best_epoch, best_state, bad, history = float("-inf"), 0, None, 0, []
    start = time.time()
    for epoch in range(1, p.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for batch in torch.randperm(len(inputs), generator=generator).split(p.batch_size):
            x, y = inputs[batch], targets[batch]
            keep = y != IGNORE
            if not keep.any():
                continue
            loss = F.cross_entropy(model.scores(model(x)[keep]), y[keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * int(keep.sum()), count + int(keep.sum())
        model.eval()
        valid = float(validate(model))
        history.append({"epoch": epoch, "loss": total / count, "valid_ndcg@10": valid})
        improved = valid > best
        if improved:
            best, best_epoch, best_state, bad = valid, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        log.info("sasrec epoch %d: loss %.4f  valid NDCG@10 %.4f%s", epoch, total / count, valid,
                 "  (best)" if improved else f"  (best {best:.4f} at epoch {best_epoch})")
        if bad >= p.patience:
            break
    if best_state is not None:  # None only if every validation was NaN
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(epochs=len(history), best_epoch=best_epoch, best_valid_ndcg10=best,
                     seconds=time.time() - start, history=history)


@torch.no_grad()
def log_probs(model: SASRec, histories: Sequence[Sequence[int]], batch: int = 1024) -> torch.Tensor:
    """[histories, items]: log p(item | history), on the model's device, ``batch`` histories a forward pass; 0 for
    an empty history, which SASRec cannot read (a product with another model then ranks by that model alone).
    In fp32 even inside the LLM's bf16 autocast: SASRec was trained in fp32, and so its scores are the same
    wherever they are asked for (evaluation, or benchmarks/ensembles.py choosing the weight)."""
    device = next(model.parameters()).device
    out = torch.zeros(len(histories), model.n_items, device=device)
    read = [i for i, h in enumerate(histories) if len(h)]
    for lo in range(0, len(read), batch):
        rows = read[lo: lo + batch]
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            out[rows] = torch.log_softmax(item_scores(model, [histories[i] for i in rows]), dim=-1)
    return out


def item_scores(model: SASRec, histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """[histories, items]: the next-item logits after each history (its last ``max_len`` items), fp32."""
    model.eval()
    device = next(model.parameters()).device
    seqs = [list(h)[-model.max_len:] for h in histories]
    if any(not s for s in seqs):
        raise ValueError("SASRec needs at least one history item to rank")
    width = max(len(s) for s in seqs)
    x = torch.tensor([[i + 1 for i in s] + [0] * (width - len(s)) for s in seqs], device=device)
    last = torch.tensor([len(s) - 1 for s in seqs], device=device)
    return model.scores(model(x)[torch.arange(len(seqs), device=device), last]).float()


def rank(model: SASRec, histories: Sequence[Sequence[int]], excluded: Sequence[set[int]], k: int,
         batch: int = 512) -> list[list[tuple[int, float]]]:
    """Top-k (catalog index, score) per history over the whole catalog, minus each history's excluded items."""
    out = []
    for lo in range(0, len(histories), batch):
        out += top_k_unseen(item_scores(model, histories[lo: lo + batch]), excluded[lo: lo + batch], k)
    return out


def rank_cases(model: SASRec, split: Split, cases: list[Case], k: int, exclude_seen: bool,
               batch: int = 512) -> dict[str, list[tuple[int, float]]]:
    """Top-k for each case (its own history; a test case's holds the validation item), keyed by case id."""
    histories = [split.case_example(c, model.max_len).history for c in cases]
    excluded = [split.case_seen(c) if exclude_seen else set() for c in cases]
    return dict(zip((c.case_id for c in cases), rank(model, histories, excluded, k, batch)))


def rank_split(model: SASRec, split: Split, users: list, split_name: str, k: int, exclude_seen: bool,
               batch: int = 512) -> dict[str, list[tuple[int, float]]]:
    """``rank_cases`` for cases, or for leave-one-out users' ``split_name`` case (keyed by user id)."""
    return rank_cases(model, split, as_cases(split, users, split_name), k, exclude_seen, batch)


def validation_ndcg10(split: Split, exclude_seen: bool, batch: int = 512) -> Callable[[SASRec], float]:
    """NDCG@10 over every validation case, by the same ranking and metric code as the test."""
    cases = split.cases("valid")

    def validate(model: SASRec) -> float:
        ranked = rank_cases(model, split, cases, 10, exclude_seen, batch)
        return score_cases(ranked, split, cases, [10], bias=False)["ndcg@10"]

    return validate


def train(split: Split, p: SASRecConfig, seed: int, exclude_seen: bool = True) -> tuple[SASRec, FitResult]:
    """A seeded SASRec trained on the split's training parts, early-stopped on validation NDCG@10."""
    torch.manual_seed(seed)  # initial weights and dropout masks
    model = SASRec(len(split.catalog), p)
    inputs, targets = training_windows(split, p.max_len, p.stride)
    log.info("sasrec: %d training windows, %d targets, %d parameters", len(inputs), int((targets != IGNORE).sum()),
             sum(t.numel() for t in model.parameters()))
    return model, fit(model, inputs, targets, p, seed, validation_ndcg10(split, exclude_seen, p.eval_batch))


# ---- checkpoint -------------------------------------------------------------------------------------------

def model_settings(p: SASRecConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(p).items() if k not in NOT_MODEL_SETTINGS}


def catalog_fingerprint(catalog: Catalog) -> str:
    """Changes when any item id or its position in the catalog changes (the model's output columns)."""
    return hashlib.sha256(json.dumps([it.item_id for it in catalog.items]).encode()).hexdigest()[:16]


def training_fingerprint(split: Split) -> str:
    """Changes when the training parts change (other data filters over the same catalog)."""
    parts = [[u, split.train_part(u)] for u in split.sequences]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def save(path: Path, model: SASRec, p: SASRecConfig, split: Split, seed: int, result: FitResult) -> None:
    """Written atomically (``genrec.io``): a failed run never leaves a file that looks complete."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "state_dict": model.state_dict(), "settings": model_settings(p),
                    "n_items": model.n_items, "catalog": catalog_fingerprint(split.catalog),
                    "training_data": training_fingerprint(split), "seed": seed, "fit": dataclasses.asdict(result)}, tmp)


def _read_checked(path: Path, split: Split) -> dict:
    """The checkpoint in ``path``, after checking that it was trained on this split's training parts (never
    on validation or test items) over this catalog."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code runs
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{path}: not a readable SASRec checkpoint ({type(e).__name__}: {e}); "
                              "delete it or set sasrec.retrain=true") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a genrec SASRec checkpoint (format {FORMAT} expected)")
    if state["catalog"] != catalog_fingerprint(split.catalog) or state["training_data"] != training_fingerprint(split):
        raise CheckpointError(f"{path}: trained on other data (catalog or training interactions differ); "
                              "use the data config it was trained with, or sasrec.retrain=true")
    return state


def load(path: Path, p: SASRecConfig, split: Split, seed: int) -> tuple[SASRec, FitResult]:
    """The model in ``path``, after checking that it was trained with these settings on this data."""
    state = _read_checked(path, split)
    wanted = {**model_settings(p), "seed": seed}
    found = {**state["settings"], "seed": state["seed"]}
    differ = sorted(k for k in wanted if wanted[k] != found.get(k))
    if differ:
        diffs = ", ".join(f"{'run' if k == 'seed' else 'sasrec'}.{k}: {found.get(k)!r} there, {wanted[k]!r} now" for k in differ)
        raise CheckpointError(f"{path}: trained with other settings ({diffs}); match them, or set sasrec.retrain=true")
    model = SASRec(state["n_items"], p)
    model.load_state_dict(state["state_dict"])
    model.eval()
    return model, FitResult(**state["fit"])


def _configured_checkpoint(path: str | Path, split: Split) -> dict:
    """The checked checkpoint that items.sasrec_checkpoint names (see ``_read_checked``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"items.sasrec_checkpoint: {path} is not a file; train one first "
                              "(python recipes/sasrec.py --config <the SASRec recipe of this data>)")
    return _read_checked(path, split)


def item_embeddings(path: str | Path, split: Split) -> torch.Tensor:
    """[items, hidden] fp32: the item embeddings of a trained SASRec checkpoint, row i = catalog index i; what
    ``items.atomic_init=sasrec`` starts the LLM's item-token rows from. The checkpoint must come from this
    split's training parts (checked), so its rows carry nothing of the validation or test targets."""
    state = _configured_checkpoint(path, split)
    return state["state_dict"]["item_emb.weight"][1:].float()


def trained_model(path: str | Path, split: Split) -> SASRec:
    """The SASRec of a checkpoint, built with the settings it was saved with (a reader of a trained model,
    such as ``decode.sasrec_weight``, need not repeat them); checked like ``item_embeddings``."""
    state = _configured_checkpoint(path, split)
    model = SASRec(state["n_items"], dataclasses.replace(SASRecConfig(), **state["settings"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()
