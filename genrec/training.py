"""Pieces of the training loop: batch order, collation, checkpoints, metrics log.

The loop itself lives in ``recipes/finetune.py`` where it can be read in one go.
Batch order is a pure function of (seed, epoch), so a resumed run replays the
exact batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
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
from genrec.output_head import output_rows, plain_head

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
    """[positions, candidates] logits. With a plain output layer only the candidates' rows are multiplied:
    for SmolLM2-135M the full 49,152 x 576 output layer is ~21% of the forward FLOPs at every position
    (against ~106M body weights), the 1,682 item rows <1%. The rows are the output layer's, with peft's
    trained item-token rows substituted (``genrec.output_head.output_rows``), tied to the input embedding
    or not."""
    if plain_head(model):
        hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state[keep]
        return hidden @ output_rows(model, candidates).T
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


def to_device(batch: dict[str, torch.Tensor] | None, device) -> dict[str, torch.Tensor] | None:
    """A collated batch on the device the model runs on (non-blocking from pinned memory on GPUs)."""
    if batch is None:
        return None
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


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

    def truncate_after(self, step: int) -> None:
        """Drop the rows of steps after ``step`` (logged by a run killed after its last checkpoint, which the
        resumed run logs again), and a last line cut off mid-write; atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the kill
            if row.get("step", 0) <= step:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))


def rng_state() -> dict:
    """This process's random streams (torch CPU, its GPU's when it has one, python's)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def write_checkpoint(folder: Path, peft_model, info: dict, config_text: str, template_text: str,
                     state: dict | None = None, extra_files: dict[str, str] | None = None,
                     adapter_weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an adapter folder atomically: everything goes to a temporary sibling, then one rename.

    ``state`` (resumable checkpoints): {"optimizer": its state dict, "scheduler": its state dict, "rngs": one
    ``rng_state`` per process, so that each process of a resumed run continues its own streams, "trainer":
    step and the like}. ``extra_files``: name → text written beside the adapter (e.g. semantic item codes).
    ``adapter_weights``: the adapter's parameters when the model holds only shards of them (genrec.sharding)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # item-token rows are saved by peft as trainable tokens; "auto" would also save the whole resized matrix
    tokens = getattr(peft_model.peft_config.get("default"), "trainable_token_indices", None)
    peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False if tokens else "auto",
                               state_dict=adapter_weights)
    (tmp / CONFIG_FILE).write_text(config_text)
    (tmp / TEMPLATE_FILE).write_text(template_text)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    if state is not None:
        folder_state = tmp / STATE_DIR
        folder_state.mkdir()
        torch.save(state["optimizer"], folder_state / "optimizer.pt")
        torch.save(state["scheduler"], folder_state / "scheduler.pt")
        for rank, rng in enumerate(state.get("rngs") or [rng_state()]):
            torch.save(rng, folder_state / rng_file(rank))
        (folder_state / "trainer_state.json").write_text(json.dumps(state.get("trainer") or {}, indent=2))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-{rank}.pt"


def read_info(folder: Path) -> dict:
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a genrec checkpoint ({INFO_FILE} missing)")
    return json.loads(path.read_text())


def load_training_state(folder: Path, rank: int = 0, world: int = 1, sharding: str | None = None) -> dict:
    """{"optimizer", "scheduler", "trainer"} of a checkpoint, with this process's random streams restored;
    refuses a checkpoint written by another number of processes (each process's share of the batches,
    and so every later step, would differ) or with other sharding (the optimizer state's layout differs)."""
    state = Path(folder) / STATE_DIR
    if not (state / "trainer_state.json").is_file():
        raise CheckpointError(f"{folder}: no {STATE_DIR}/ to resume from")
    trainer = json.loads((state / "trainer_state.json").read_text())
    saved_world = trainer.get("processes", 1)
    if saved_world != world:
        raise CheckpointError(f"{folder} was written by a run of {saved_world} process(es) and this run has {world}: "
                              f"resume with {saved_world} (the batches each process sees depend on it), or start "
                              "over with run.resume=false and a new run.output_dir")
    if trainer.get("sharding") != sharding:
        raise CheckpointError(f"{folder} was written under {trainer.get('sharding') or 'DDP / one process'} and this "
                              f"run is under {sharding or 'DDP / one process'}: resume with the launcher it started with")
    rng = torch.load(state / rng_file(rank), weights_only=False)  # python's RNG state is a plain tuple written by us
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return {"optimizer": torch.load(state / "optimizer.pt", weights_only=True),
            "scheduler": torch.load(state / "scheduler.pt", weights_only=True), "trainer": trainer}


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
