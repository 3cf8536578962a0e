"""Which dtype is fastest on this machine for the default model? (decides model.dtype=auto)

    .venv/bin/python benchmarks/dtype.py [--tokens 2048] [--repeats 3]

Measures, in the same run, for float32 and bfloat16: prefill throughput (forward over a
batch of 256-token prompts, logits for the last position only) and LoRA training
throughput (forward + backward + AdamW step, loss on the last 12 positions, the way
recipes/finetune.py computes it). Last line: one JSON object, with the dtype ``auto`` picks and the
instruction set torch's kernels use here (``cpu_capability``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.config import AdapterConfig, ModelConfig
from genrec.model.loading import attach_adapter, resolve_dtype, resolve_model_path
from genrec.training.batching import collate
from genrec.training.loss import training_loss


def measure(dtype_name: str, tokens: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(ModelConfig())
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    rows = max(1, tokens // 256)
    ids = torch.randint(100, 40000, (rows, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids[:1, :32], logits_to_keep=1)
        start = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids, logits_to_keep=1)
        prefill = rows * 256 * repeats / (time.perf_counter() - start)

    model = attach_adapter(model, AdapterConfig(dropout=0.0))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = collate([{"input_ids": r.tolist(), "labels": [-100] * 244 + r.tolist()[244:]} for r in ids], pad_id=0)

    def step():
        bf16 = dtype == torch.bfloat16
        loss = training_loss(model, batch, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), bf16)
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    train = rows * 256 * repeats / (time.perf_counter() - start)
    return {"prefill_tokens_per_s": round(prefill, 1), "train_tokens_per_s": round(train, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {name: measure(name, args.tokens, args.repeats) for name in ("float32", "bfloat16")}
    results["bf16_speedup_prefill"] = round(results["bfloat16"]["prefill_tokens_per_s"] / results["float32"]["prefill_tokens_per_s"], 2)
    results["bf16_speedup_train"] = round(results["bfloat16"]["train_tokens_per_s"] / results["float32"]["train_tokens_per_s"], 2)
    results["auto_dtype"] = str(resolve_dtype("auto")).replace("torch.", "")
    results["threads"] = torch.get_num_threads()
    # the kernels' instruction set as torch sees it: ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA lower it, which is
    # how an AVX2-only machine is emulated on a newer CPU (docs/public-benchmarks.md)
    results["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
