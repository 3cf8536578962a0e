"""The checkpoint format: an adapter folder plus what genrec needs to use or resume it.

A checkpoint folder holds peft's adapter files, the run's config (``CONFIG_FILE``), the prompt template
it was trained with (``TEMPLATE_FILE``, reused at inference), what it was trained on (``INFO_FILE``) and,
when resumable, the optimizer, scheduler and random-stream state (``STATE_DIR``). Periodic checkpoints
live in ``<output_dir>/checkpoints/step-N``.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from genrec.errors import CheckpointError
from genrec.io import atomic_folder

STATE_DIR = "genrec_state"
TEMPLATE_FILE = "prompt_template.yaml"
CONFIG_FILE = "config.yaml"
INFO_FILE = "genrec.json"


def rng_state() -> dict:
    """This process's random streams (torch CPU, its GPU's when it has one, python's)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def write_checkpoint(folder: Path, peft_model, info: dict, config_text: str, template_text: str,
                     state: dict | None = None, extra_files: dict[str, str] | None = None,
                     adapter_weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an adapter folder atomically (``genrec.io.atomic_folder``): a temporary sibling, then one rename.

    ``state`` (resumable checkpoints): {"optimizer": its state dict, "scheduler": its state dict, "rngs": one
    ``rng_state`` per process, so that each process of a resumed run continues its own streams, "trainer":
    step and the like}. ``extra_files``: name → text written beside the adapter (e.g. semantic item codes).
    ``adapter_weights``: the adapter's parameters when the model holds only shards of them (genrec.training.sharding)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        tmp.mkdir()
        # item-token rows are saved by peft as trainable tokens; "auto" would also save the whole resized matrix
        tokens = getattr(peft_model.peft_config.get("default"), "trainable_token_indices", None)
        peft_model.save_pretrained(str(tmp), safe_serialization=True,
                                   save_embedding_layers=False if tokens else "auto", state_dict=adapter_weights)
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
