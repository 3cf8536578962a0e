"""One seed's decoding-time causal results kept as a small record, so that seeds scored on different machines can
be pooled later (``benchmarks/causal_public.py --records``) without their trained adapters or cached scores.

Why: retraining a Beauty seed takes about 95 minutes and a working folder does not outlive its machine, so the
three seeds of a pooled figure may never sit on one machine together. A pool needs, per seed, only what the rule
and the paired bootstrap read:
- every setting's validation and test metrics (the seed means are taken over these);
- each test user's rank of their target where it is in the top 10 (``genrec.evaluation.bias.target_ranks``;
  per-user NDCG@10 from ``ndcg_from_ranks``; on Beauty about 9% of users);
- the fitted propensity temperature and each system's training minutes;
- the split's targets and training popularity, so that a pool can check its seeds rank the same users against
  the same propensities, and needs no data file.

Format: gzip'd JSON (``FORMAT``), about 150 kB for Beauty's 22,363 users and 28 settings.
"""

from __future__ import annotations

import gzip
import json
import platform
from pathlib import Path

import torch

from genrec.io import atomic_path

FORMAT = "genrec.causal_public.record/1"
# what every pooled seed must share: the users, their targets' propensities, and how the metrics were computed
SHARED = ("dataset", "targets", "train_popularity", "ips_clip")


def machine() -> dict[str, str]:
    """The CPU a record was scored on (its figures' timings and dtype path depend on it)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"cpu": name, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def write(path: Path, record: dict) -> Path:
    """Write a record whole or not at all (a half-written record must never be pooled)."""
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as out:
        json.dump({"format": FORMAT, **record}, out)
    return path


def read(path: Path) -> dict:
    """A record written by ``write``, checked for what pooling reads; a clear error names the file and key."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a causal_public record (gzip'd JSON): {err}") from err
    if record.get("format") != FORMAT:
        raise SystemExit(f"{path}: format {record.get('format')!r}, expected {FORMAT!r}")
    for key in ("seed", "settings", *SHARED):
        if key not in record:
            raise SystemExit(f"{path}: no {key!r} key")
    users = len(record["targets"]["test"])
    for i, s in enumerate(record["settings"]):
        missing = {"system", "knob", "value", "valid", "test", "test_hits"} - set(s)
        if missing:
            raise SystemExit(f"{path}: settings[{i}] lacks {sorted(missing)}")
        if s["test_hits"]["users"] and max(s["test_hits"]["users"]) >= users:
            raise SystemExit(f"{path}: settings[{i}].test_hits names a user past the {users} test users")
    return record


def setting_key(setting: dict) -> tuple[str, str, float]:
    return setting["system"], setting["knob"], float(setting["value"])


def check_poolable(records: list[dict], names: list[str]) -> None:
    """Seeds pool only when they are distinct, rank the same users against the same propensities, and were
    scored on the same grid of settings; anything else is an error naming the record and what differs."""
    first, first_name = records[0], names[0]
    grid = [setting_key(s) for s in first["settings"]]
    seen = {first["seed"]: first_name}
    for record, name in zip(records[1:], names[1:]):
        if record["seed"] in seen:
            raise SystemExit(f"{name}: seed {record['seed']} is already in the pool ({seen[record['seed']]})")
        seen[record["seed"]] = name
        for key in SHARED:
            if record[key] != first[key]:
                raise SystemExit(f"{name}: {key!r} differs from {first_name}'s; seeds pool only over the same "
                                 "split (users, targets, training popularity) and ips_clip")
        keys = [setting_key(s) for s in record["settings"]]
        if set(keys) != set(grid):
            only_here, only_there = sorted(set(keys) - set(grid)), sorted(set(grid) - set(keys))
            raise SystemExit(f"{name}: its grid of settings differs from {first_name}'s (only in {name}: "
                             f"{only_here or 'none'}; only in {first_name}: {only_there or 'none'}); score the "
                             "seeds with the same --penalties/--gammas/--mixes/--calibrated-mixes/--trained")
