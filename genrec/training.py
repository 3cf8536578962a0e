"""Pieces of the training loop: batch order, collation, checkpoints, metrics log.

The loop itself lives in ``recipes/finetune.py`` where it can be read in one go.
Batch order is a pure function of (seed, epoch), so a resumed run replays the
exact batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from genrec.encoding import IGNORE_INDEX
from genrec.errors import CheckpointError
from genrec.modeling import PLAIN_HEAD_TYPES

STATE_DIR = "genrec_state"
TEMPLATE_FILE = "prompt_template.yaml"
CONFIG_FILE = "config.yaml"
INFO_FILE = "genrec.json"


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
    """[positions, candidates] logits. With a plain tied output layer only the candidates' rows are
    multiplied: for SmolLM2-135M the full 49,152 x 576 output layer is ~21% of the forward FLOPs at every
    position (against ~106M body weights), the 1,682 item rows <1%. The rows come through the input
    embedding so that peft's trained item-token rows are the ones used."""
    config = model.config
    if getattr(config, "model_type", "") in PLAIN_HEAD_TYPES and getattr(config, "tie_word_embeddings", False):
        hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state[keep]
        return hidden @ model.get_input_embeddings()(candidates).T
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return logits.reshape(-1, logits.shape[-1])[:, candidates]


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


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class MetricsLog:
    """Append-only JSON lines; each line flushed so a crash loses nothing logged."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def write_checkpoint(folder: Path, peft_model, info: dict, config_text: str, template_text: str,
                     optimizer=None, scheduler=None, trainer_state: dict | None = None,
                     extra_files: dict[str, str] | None = None) -> Path:
    """Write an adapter folder atomically: everything goes to a temporary sibling, then one rename.
    ``extra_files``: name → text written beside the adapter (e.g. semantic item codes)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # item-token rows are saved by peft as trainable tokens; "auto" would also save the whole resized matrix
    tokens = getattr(peft_model.peft_config.get("default"), "trainable_token_indices", None)
    peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False if tokens else "auto")
    (tmp / CONFIG_FILE).write_text(config_text)
    (tmp / TEMPLATE_FILE).write_text(template_text)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    if optimizer is not None:
        state = tmp / STATE_DIR
        state.mkdir()
        torch.save(optimizer.state_dict(), state / "optimizer.pt")
        torch.save(scheduler.state_dict(), state / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, state / "rng.pt")
        (state / "trainer_state.json").write_text(json.dumps(trainer_state or {}, indent=2))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_info(folder: Path) -> dict:
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a genrec checkpoint ({INFO_FILE} missing)")
    return json.loads(path.read_text())


def load_training_state(folder: Path, optimizer, scheduler) -> dict:
    state = Path(folder) / STATE_DIR
    if not (state / "trainer_state.json").is_file():
        raise CheckpointError(f"{folder}: no {STATE_DIR}/ to resume from")
    optimizer.load_state_dict(torch.load(state / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(state / "scheduler.pt", weights_only=True))
    rng = torch.load(state / "rng.pt", weights_only=False)  # python's RNG state is a plain tuple written by us
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return json.loads((state / "trainer_state.json").read_text())


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and not p.name.endswith((".tmp", ".old"))
            and (p / STATE_DIR / "trainer_state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
