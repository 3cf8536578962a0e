"""Process-level plumbing for recipes: logging, threads, accelerator, clean user errors."""

from __future__ import annotations

import logging
import os
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


def make_accelerator(dtype: torch.dtype):
    from accelerate import Accelerator

    mixed = "bf16" if dtype == torch.bfloat16 else ("fp16" if dtype == torch.float16 else "no")
    if mixed == "fp16" and not torch.cuda.is_available():
        mixed = "no"
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def run(main, argv=None) -> int:
    """Run a recipe's main; user errors print one clear line and exit 2 instead of a traceback."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except GenrecError as e:
        print(f"genrec: error: {e}", file=sys.stderr)
        return 2
    return 0
