"""LoRA training throughput: genrec's loop vs a plain transformers.Trainer, in one run.

    .venv/bin/python benchmarks/training.py [--steps 6] [--batch 8] [--history 20]

Same model (default SmolLM2-135M), same ml-100k next-title windows, same LoRA
(r16, all 7 projections, dropout 0), same batch size. Each configuration runs in its
own subprocess so that peak RSS is its own:

- ``trainer_fp32``: transformers.Trainer, fp32, right padding, HF's loss over all logits;
- ``genrec_fp32`` / ``genrec_bf16`` / ``genrec_8bit`` / ``genrec_nf4``: the loop of
  recipes/finetune.py (``training_loss``: left padding, logits only at completion
  positions; bf16 autocast with fp32 adapter weights computing in bf16; bitsandbytes
  base weights for 8bit/nf4).

Also measures a bf16 matmul peak on this CPU and the fraction of it the bf16 loop
reaches (training FLOPs/token ≈ 4 × non-embedding parameters: forward + input
gradients; the frozen base needs no weight gradients). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ["trainer_fp32", "genrec_fp32", "genrec_bf16", "genrec_8bit", "genrec_nf4"]


def examples(history: int, count: int):
    from genrec.config import load_config
    from genrec.data import sliding_windows
    from genrec.recommender import prepare

    cfg = load_config(None, [f"data.max_history={history}"])
    setup = prepare(cfg)
    windows = sliding_windows(setup.split, history, history)  # full-length histories only
    step = max(1, len(windows) // count)
    rows = [setup.encoder.encode(w) for w in windows[::step][:count]]
    return setup, rows


def worker(mode: str, steps: int, batch: int, history: int) -> dict:
    from genrec.config import AdapterConfig, ModelConfig
    from genrec.model.loading import attach_adapter, load_base_model
    from genrec.runtime import peak_rss_mb
    from genrec.training.batching import collate
    from genrec.training.loss import training_loss

    setup, rows = examples(history, (steps + 1) * batch)
    batches = [rows[i * batch:(i + 1) * batch] for i in range(steps + 1)]
    tokens = sum(len(r["input_ids"]) for b in batches[1:] for r in b)
    adapter = AdapterConfig(dropout=0.0)

    if mode == "trainer_fp32":
        import datasets
        from transformers import (
            DataCollatorForSeq2Seq,
            Trainer,
            TrainerCallback,
            TrainingArguments,
        )

        model = load_base_model(ModelConfig(dtype="float32"), setup.model_path, for_training=True)
        model = attach_adapter(model, adapter)
        data = datasets.Dataset.from_list([r for b in batches for r in b])
        marks = {}

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    marks["start"] = time.perf_counter()

        args = TrainingArguments(output_dir="/tmp/genrec-bench-trainer", per_device_train_batch_size=batch,
                                 max_steps=steps + 1, learning_rate=2e-4, report_to=[], save_strategy="no",
                                 logging_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()],
                          data_collator=DataCollatorForSeq2Seq(setup.tokenizer, padding=True))
        trainer.train()
        elapsed = time.perf_counter() - marks["start"]
        # the Trainer shuffles: count the tokens of the batches it saw after the first is not possible
        # exactly, so use the mean tokens per batch of the same examples
        tokens = int(sum(len(r["input_ids"]) for b in batches for r in b) * steps / (steps + 1))
    else:
        quant = {"genrec_8bit": "8bit", "genrec_nf4": "4bit"}.get(mode, "none")
        dtype = "float32" if mode == "genrec_fp32" else "bfloat16"
        model = load_base_model(ModelConfig(dtype=dtype, quantization=quant), setup.model_path, for_training=True)
        model = attach_adapter(model, adapter)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        use_bf16 = dtype == "bfloat16"
        pad = setup.tokenizer.pad_token_id
        for i, b in enumerate(batches):
            if i == 1:
                start = time.perf_counter()
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16)
            loss = training_loss(model, collate(b, pad), autocast, use_bf16)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
    return {"tokens_per_s": round(tokens / elapsed, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "seconds": round(elapsed, 1), "tokens": tokens}


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--worker", choices=MODES)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch, args.history)))
        return
    results = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(args.steps),
                               "--batch", str(args.batch), "--history", str(args.history)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            results[mode] = {"error": proc.stderr.strip().splitlines()[-1][:300]}
        else:
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    from transformers import AutoConfig

    from genrec.config import ModelConfig
    from genrec.model.loading import resolve_model_path

    config = AutoConfig.from_pretrained(str(resolve_model_path(ModelConfig())))
    embed = config.vocab_size * config.hidden_size
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    flops_per_token = 4 * (params - embed)
    peak = matmul_peak_gflops()
    bf16 = results["genrec_bf16"]["tokens_per_s"]
    out = {
        "tokens_per_s": bf16,
        "baseline_tokens_per_s": results["trainer_fp32"]["tokens_per_s"],
        "speedup": round(bf16 / results["trainer_fp32"]["tokens_per_s"], 2),
        "peak_rss_mb": {m.split("_", 1)[1] if m.startswith("genrec") else m: r.get("peak_rss_mb") for m, r in results.items()},
        "modes": results,
        "bf16_matmul_peak_gflops": round(peak, 1),
        "roofline_fraction": round(bf16 * flops_per_token / 1e9 / peak, 3),
        "flops_per_token": flops_per_token,
        "batch": args.batch, "steps": args.steps, "history": args.history, "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
