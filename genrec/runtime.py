"""Process-level plumbing for recipes: logging, threads, accelerator, clean user errors."""

from __future__ import annotations

import logging
import os
import resource
import sys
import warnings

import torch

from genrec.errors import GenrecError


def setup_logging(main_process: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s genrec %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "datasets", "accelerate", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*kernels.*")


def set_threads() -> None:
    """Honour OMP_NUM_THREADS: side-by-side processes with default pools slow each other ~10x on 2 cores."""
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit():
        torch.set_num_threads(int(n))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def make_accelerator(dtype: torch.dtype, tf32: bool = True):
    """The Accelerator of a recipe: mixed precision from the model dtype, the launcher's processes and
    devices (torchrun / accelerate launch), TF32 matmuls on GPUs that have them (model.tf32)."""
    from accelerate import Accelerator

    mixed = "bf16" if dtype == torch.bfloat16 else ("fp16" if dtype == torch.float16 else "no")
    if mixed == "fp16" and not torch.cuda.is_available():
        mixed = "no"
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def model_device(accelerator) -> torch.device | None:
    """Where a recipe loads the base model: this process's device, so that setup work before
    ``accelerator.prepare`` (S-DPO's reference pass, growing the embeddings) already runs there; None (the
    CPU) under FSDP and DeepSpeed, which shard the model themselves as they wrap it."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    return accelerator.device


def run(main, argv=None) -> int:
    """Run a recipe's main; user errors print one clear line and exit 2 instead of a traceback."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except GenrecError as e:
        print(f"genrec: error: {e}", file=sys.stderr)
        return 2
    return 0
