"""The GPU check: every recipe path on a CUDA GPU with tiny random models built on the spot (no weights
travel). Last line: one JSON object with pass/fail per case. Each case takes about a minute on an H200
(50-95 s, nearly all of it process starts and imports, 2026-12-04), so all 17 take longer than a
15-minute device lease: name the cases that matter (--cases); each prints its result as it ends.

    python benchmarks/gpu_check.py                    # every case that this machine can run
    python benchmarks/gpu_check.py --cases title_bf16 atomic_4bit
    python benchmarks/gpu_check.py --allow-cpu --cases title_bf16   # the plumbing, on a machine without a GPU

Each case runs the recipes as a user does (python / torchrun / accelerate launch, in a subprocess, so a
CUDA error ends that case only) and then checks what they wrote:

- finetune -> evaluate -> recommend for title, plain id, atomic and semantic identifiers in bf16, and
  title / atomic under 4-bit QLoRA (bitsandbytes; skipped when it is not installed);
- the untied-output-layer model (item rows in both layers), gradient checkpointing, eager attention,
  flash-attention-2 (when installed), an ensemble of two adapters, evaluation with model.device_map=auto;
- FSDP (recipes/accelerate/fsdp.yaml) and DeepSpeed ZeRO-2 (when installed) on this GPU, with a
  halt-and-resume; DDP over 2 GPUs when more than one is visible.

A case passes when its commands exit 0, training logged finite losses, evaluation ran on a CUDA device
and returned only valid, distinct items, and its own extra checks hold.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tiny_fixtures import build_tiny_model, write_toy_dataset  # noqa: E402

CONFIGS = REPO / "recipes" / "configs" / "ml100k"
TITLE, ATOMIC = CONFIGS / "smollm2_lora.yaml", CONFIGS / "smollm2_atomic.yaml"


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def tiny(model: Path, data: Path, out: Path, dtype: str) -> list[str]:
    return [f"run.output_dir={out}", f"data.path={data}", "data.dataset=toy", "data.max_history=5",
            f"model.name_or_path={model}", f"model.dtype={dtype}", "train.batch_size=8", "train.max_steps=6",
            "train.log_every=1", "train.save_every=3", "train.eval_users=8", "decode.batch_users=8",
            "decode.num_beams=20"]


# name -> (config, extra overrides, options); options: quantized, untied, launcher, members, needs, resume
CASES: dict[str, tuple[Path, list[str], dict]] = {
    "title_bf16": (TITLE, [], {}),
    "id_bf16": (TITLE, ["items.identifier=id", "prompt.template=prompts/next_item_id.yaml"], {}),
    "atomic_bf16": (ATOMIC, [], {}),
    "semantic_bf16": (CONFIGS / "smollm2_semantic.yaml",
                      ["items.semantic_source=collaborative", "items.semantic_codebook=4", "items.semantic_levels=2"], {}),
    "title_4bit": (TITLE, ["model.quantization=4bit"], {"needs": "bitsandbytes"}),
    "atomic_4bit": (ATOMIC, ["model.quantization=4bit", "model.bnb_4bit_quant_storage=bfloat16"],
                    {"needs": "bitsandbytes"}),
    "atomic_8bit": (ATOMIC, ["model.quantization=8bit"], {"needs": "bitsandbytes"}),
    "untied_atomic_bf16": (ATOMIC, [], {"untied": True}),
    "gradient_checkpointing": (ATOMIC, ["train.gradient_checkpointing=true"], {}),
    "eager_attention": (TITLE, ["model.attn_implementation=eager"], {}),
    "flash_attention_2": (TITLE, ["model.attn_implementation=flash_attention_2"], {"needs": "flash_attn"}),
    "ensemble": (CONFIGS / "smollm2_atomic_ensemble.yaml", ["train.ensemble=2"], {"members": 2}),
    "device_map_auto": (TITLE, ["model.device_map=auto"], {"evaluate_only_override": True}),
    "resume_bf16": (ATOMIC, [], {"resume": True}),
    "fsdp_1gpu": (ATOMIC, [], {"launcher": "fsdp", "resume": True}),
    "deepspeed_zero2_1gpu": (ATOMIC, [], {"launcher": "deepspeed", "resume": True, "needs": "deepspeed"}),
    "ddp_2gpu": (ATOMIC, [], {"launcher": "ddp", "gpus": 2}),
}


def launcher(kind: str | None, processes: int) -> list[str]:
    if kind is None:
        return [sys.executable]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "bf16"]
    if kind == "ddp":
        return [*accelerate, "--multi_gpu"]
    return [*accelerate[:3], "--config_file", str(REPO / "recipes" / "accelerate" / {
        "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero2.yaml"}[kind]), *accelerate[3:]]


def sh(cmd: list[str], log: Path, timeout: int = 300) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[:6])} ... (log: {log})")


def run_case(name: str, work: Path, models: dict[str, Path], data: Path, dtype: str, gpu: bool) -> dict:
    config, extra, opts = CASES[name]
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    model = models["untied" if opts.get("untied") else "tied"]
    base = ["--config", str(config), *tiny(model, data, out / "run", dtype)]
    train_extra = [] if opts.get("evaluate_only_override") else extra
    start = time.time()
    head = launcher(opts.get("launcher"), opts.get("gpus", 1))
    if opts.get("resume"):
        sh([*head, "recipes/finetune.py", *base, *train_extra, "train.halt_after_steps=3"], log)
        assert not (out / "run" / "adapter").exists(), "a halted run left a final adapter"
        sh([*head, "recipes/finetune.py", *base, *train_extra, "run.resume=true"], log)
    else:
        sh([*head, "recipes/finetune.py", *base, *train_extra], log)
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 6, f"logged steps {steps}"
    assert all(math.isfinite(r["loss"]) for r in rows), "a non-finite loss"
    evaluate = [sys.executable] if opts.get("launcher") != "ddp" else head
    sh([*evaluate, "recipes/evaluate.py", *base, *extra, f"run.output_dir={out / 'eval'}",
        f"run.checkpoint={out / 'run' / 'adapter'}"], log)
    results = json.loads((out / "eval" / "eval_results.json").read_text())
    m, p = results["metrics"], results["protocol"]
    assert m["valid_item_rate"] == 1.0 and m["duplicate_rate"] == 0.0, "invalid or duplicate items"
    if gpu:
        assert p["device"].startswith("cuda"), f"evaluated on {p['device']}"
    if opts.get("members"):
        assert p["adapter_members"] == opts["members"], f"{p['adapter_members']} members"
    if opts.get("launcher") == "ddp":
        assert p["processes"] == 2, f"{p['processes']} processes"
    if opts.get("untied"):
        from safetensors.torch import load_file

        saved = load_file(str(out / "run" / "adapter" / "adapter_model.safetensors"))
        assert any("lm_head.token_adapter" in k for k in saved), "no output-layer item rows saved"
    sh([sys.executable, "recipes/recommend.py", *base, *extra, f"run.checkpoint={out / 'run' / 'adapter'}",
        f"run.output_dir={out / 'recommend'}", "recommend.user_id=3", "recommend.k=5"], log)
    recs = [json.loads(x) for x in (out / "recommend" / "recommendations.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and len({r["item_id"] for r in recs}) == 5, "recommend: not 5 distinct items"
    return {"ok": True, "seconds": round(time.time() - start, 1), "ndcg@10": round(m["ndcg@10"], 4),
            "device": p["device"], "dtype": p["dtype"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when no GPU is visible")
    parser.add_argument("--work", default=None, help="folder for runs and logs (default: a temporary one)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:  # `make bench` runs every script: a machine without a GPU skips this one
        print(json.dumps({"skipped": "no CUDA GPU visible (--allow-cpu checks the plumbing on a CPU)"}))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="genrec-gpu-check-"))
    data = write_toy_dataset(work / "toy")
    models = {"tied": build_tiny_model(work / "tiny"), "untied": build_tiny_model(work / "tiny-untied", tie=False)}
    dtype = "bfloat16" if not gpu or torch.cuda.is_bf16_supported() else "float16"
    gpus = torch.cuda.device_count() if gpu else 0
    cases: dict[str, dict] = {}
    for name in args.cases:
        opts = CASES[name][2]
        if opts.get("needs") and not installed(opts["needs"]):
            cases[name] = {"ok": None, "skipped": f"{opts['needs']} is not installed"}
        elif opts.get("gpus", 1) > max(gpus, 1) or (opts.get("launcher") in ("fsdp", "deepspeed", "ddp") and not gpu) \
                or (name == "device_map_auto" and not gpu):
            cases[name] = {"ok": None, "skipped": f"needs {opts.get('gpus', 1)} CUDA GPU(s); {gpus} visible"}
        else:
            try:
                cases[name] = run_case(name, work, models, data, dtype, gpu)
            except Exception as e:  # noqa: BLE001 - one failed case is a result, the next case runs
                cases[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        print(f"{name}: {cases[name]}", file=sys.stderr, flush=True)
    summary = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu", "gpus": gpus, "torch": torch.__version__,
        "dtype": dtype, "work": str(work), "cases": cases,
        "passed": sum(c["ok"] is True for c in cases.values()), "failed": sum(c["ok"] is False for c in cases.values()),
        "skipped": sum(c["ok"] is None for c in cases.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
