"""Load test of `genrec serve` on loopback: throughput and latency percentiles at 1, 4 and 16 concurrent clients.

    .venv/bin/python benchmarks/serve_load.py [--config recipes/configs/ml100k/smollm2_atomic.yaml]
        [--set run.output_dir=runs/demo/tuned ...] [--requests 64] [--seconds 60] [--clients 1 4 16]
        [--explained-requests 16] [--explained-clients 1 4]

Starts the server as a user does (its own process, 127.0.0.1 only, a free port), waits for /health,
then for each concurrency level sends top-10 requests for users drawn (seeded) from the catalog's users,
each client one request at a time, until ``--requests`` are done or ``--seconds`` have passed; the same
for explained top-10 at ``--explained-clients``. Counts every non-200 answer and transport error.
Last line: one JSON object with, per level, requests, errors, throughput (requests/s) and p50/p95/p99
latency in ms, plus how many ranking batches the server ran (several requests share one forward).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def level(url: str, users: list[str], clients: int, requests: int, seconds: float, explain: bool, seed: int) -> dict:
    rng = random.Random(seed * 1000 + clients)
    todo = [rng.choice(users) for _ in range(requests)]
    lock = threading.Lock()
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    def client():
        nonlocal errors
        while time.perf_counter() < deadline:
            with lock:
                if not todo:
                    return
                user = todo.pop()
            start = time.perf_counter()
            try:
                status = post(url + "/recommend", {"user_id": user, "k": 10, "explain": explain})
            except OSError:
                status = -1
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors += status != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "throughput_rps": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="recipes/configs/ml100k/smollm2_atomic.yaml")
    parser.add_argument("--set", nargs="*", default=["run.output_dir=runs/demo/tuned"], metavar="KEY=VALUE")
    parser.add_argument("--requests", type=int, default=64, help="per concurrency level, at most")
    parser.add_argument("--seconds", type=float, default=60, help="per concurrency level, at most")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--explained-requests", type=int, default=16)
    parser.add_argument("--explained-clients", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "genrec"), "serve", "--config", args.config,
                               "--port", str(port), *args.set], cwd=REPO, env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                get(url + "/health")
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"genrec serve exited: {server.stderr.read()[-3000:]}")
                time.sleep(0.5)
        users = get(url + "/api/users?limit=1000")
        post(url + "/recommend", {"user_id": users[0], "k": 10, "explain": True})  # warm-up
        plain = [level(url, users, c, args.requests, args.seconds, False, args.seed) for c in args.clients]
        explained = [level(url, users, c, args.explained_requests, args.seconds, True, args.seed)
                     for c in args.explained_clients]
        health = get(url + "/health")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for row in plain + explained:
        print(row, file=sys.stderr)
    print(json.dumps({"top10": plain, "explained_top10": explained, "errors": sum(r["errors"] for r in plain + explained),
                      "ranking_batches": health["batches"], "checkpoint": health["checkpoint"],
                      "threads": os.environ.get("OMP_NUM_THREADS")}))


if __name__ == "__main__":
    main()
