"""Where an unexplained top-10 request spends its time, and whether torch.compile would bring it under 100 ms.

    .venv/bin/python benchmarks/latency.py --adapter runs/demo/tuned/adapter [--users 100] [--compile]
        [--config recipes/configs/ml100k/smollm2_atomic.yaml] [--set KEY=VALUE ...]

Ranks a seeded sample of ``--users`` test users one at a time, as `genrec serve` does (``Recommender.rank`` on
one example, k = 10, seen items excluded), and reports the median and p95 request time, the prompt length,
and a torch.profiler breakdown of 20 requests: the share of CPU time in matrix products (``aten::mm``,
i.e. the model's linear layers at the bf16/fp32 speed of this CPU), in attention, and in everything else.
``--compile``: the same requests again after ``torch.compile(model body, dynamic=True)`` (an experiment,
not a product setting: genrec does not compile), with the compile's warm-up time.

Last line: one JSON object with ``top10_p50``, ``top10_p95``, ``profile`` and, with ``--compile``,
``compiled`` (``top10_p50``, ``top10_p95``, ``warmup_s``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.evaluation.protocol import evaluation_users  # noqa: E402
from genrec.model.loading import resolve_dtype  # noqa: E402
from genrec.recommender import Recommender  # noqa: E402
from genrec.runtime import make_accelerator, set_threads  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(requests) -> dict:
    seconds = []
    for request in requests:
        start = time.perf_counter()
        request()
        seconds.append(time.perf_counter() - start)
    return {"top10_p50": round(statistics.median(seconds), 4), "top10_p95": round(percentile(seconds, 0.95), 4)}


def profile_shares(requests) -> dict:
    """Shares of the profiled CPU time (self time of each operator) by kind of work."""
    from torch.profiler import profile

    with profile() as prof:
        for request in requests:
            request()
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    mm = sum(t for k, t in self_us.items() if k in ("aten::mm", "aten::addmm", "aten::bmm"))
    attention = sum(t for k, t in self_us.items() if "scaled_dot_product" in k)
    return {"matmul": round(mm / total, 3), "attention": round(attention / total, 3),
            "other": round((total - mm - attention) / total, 3),
            "ms_per_request": round(total / 1000 / len(requests), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/configs/ml100k/smollm2_atomic.yaml")
    parser.add_argument("--adapter", required=True, help="the tuned adapter (e.g. make demo's runs/demo/tuned/adapter)")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--compile", action="store_true", help="also time the requests after torch.compile")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    set_threads()
    cfg = load_config(args.config, [f"run.checkpoint={args.adapter}", *args.set])
    recommender, _ = Recommender.load(cfg)
    split = recommender.setup.split
    users = evaluation_users(split, args.users, args.seed)
    examples = [split.example(u, "test", cfg.data.max_history) for u in users]
    requests = [lambda ex=ex, u=u: recommender.rank([ex], [split.seen(u, "test")], 10) for ex, u in zip(examples, users)]
    prompt_tokens = [len(recommender.setup.encoder.prompt_ids(ex)) for ex in examples]
    out = {"users": len(users), "prompt_tokens_p50": statistics.median(prompt_tokens),
           "threads": torch.get_num_threads(), "dtype": str(resolve_dtype(cfg.model.dtype)).replace("torch.", "")}
    with make_accelerator(resolve_dtype(cfg.model.dtype)).autocast():
        timed(requests[:5])  # warm-up: first-call allocations, the fp32 head copy
        out.update(timed(requests))
        out["profile"] = profile_shares(requests[:20])
        if args.compile:
            head = recommender.next_logp.head
            head.body = torch.compile(head.body, dynamic=True)
            start = time.perf_counter()
            timed(requests[:5])
            out["compiled"] = {"warmup_s": round(time.perf_counter() - start, 1), **timed(requests)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
