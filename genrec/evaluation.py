"""Evaluation under the fixed protocol (DESIGN §5), sharded over processes.

Users are ordered by prompt length and cut into fixed batches *before*
sharding; process r decodes batches r, r+W, r+2W, ... So every user is decoded
in the same batch whatever the number of processes, and results are identical
to a single process.
"""

from __future__ import annotations

import random

from genrec.baselines import most_popular_unseen
from genrec.bias_metrics import bias_metrics
from genrec.config import Config
from genrec.data.splits import Split, parse_time
from genrec.errors import DataError
from genrec.metrics import ranking_metrics


def evaluation_users(split: Split, n: int | None, seed: int, after: float | None = None,
                     split_name: str = "test") -> list[str]:
    """Users evaluated (all, or a seeded sample of ``n``); with ``after`` (eval.period=after: data.time_cut)
    only those whose ``split_name`` interaction is at or after that time."""
    users = split.eval_users
    if after is not None:
        users = [u for u in users if split.target_time(u, split_name) >= after]
        if not users:
            raise DataError(f"no {split_name} interaction is at or after data.time_cut; move the cut earlier")
    if n is None or n >= len(users):
        return users
    position = {u: i for i, u in enumerate(users)}
    return sorted(random.Random(seed).sample(users, n), key=position.__getitem__)


def period_start(cfg: Config) -> float | None:
    """eval.period=after: the data.time_cut evaluated users' interactions must reach; None = every user."""
    return parse_time(cfg.data.time_cut) if cfg.eval.period == "after" else None


def shard_batches(lengths: list[int], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches (positions into the user list) of a fixed global batching."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[lo: lo + batch_size] for lo in range(0, len(order), batch_size)]
    return batches[rank::world]


def rank_users(recommender, users: list[str], split_name: str, k: int, rank: int = 0, world: int = 1,
               progress: bool = False, rationales: dict | None = None) -> dict[str, list[tuple[int, float]]]:
    """Top-k for the users of this shard, keyed by user id; ``rationales`` collects each user's written
    rationale when the template has one."""
    setup = recommender.setup
    max_history = setup.cfg.data.max_history
    examples = [setup.split.example(u, split_name, max_history) for u in users]
    exclude = setup.cfg.decode.exclude_seen
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    mine = [i for batch in shard_batches([len(p) for p in prompts], setup.cfg.decode.batch_users, rank, world)
            for i in batch]
    ranked = recommender.rank(
        [examples[i] for i in mine],
        [setup.split.seen(users[i], split_name) if exclude else set() for i in mine],
        k, progress=progress, desc=f"{split_name} users (process {rank})", prompts=[prompts[i] for i in mine],
    )
    if rationales is not None and recommender.setup.template.has_rationale:
        rationales.update({users[i]: recommender.decode_rationale(r) for i, r in zip(mine, recommender.last_rationales)})
    return {users[i]: r for i, r in zip(mine, ranked)}


def top_k_unseen(scores, excluded, k: int) -> list[list[tuple[int, float]]]:
    """Top-``k`` (column, score) per row of a dense [rows, items] score tensor, best first, leaving out each
    row's ``excluded`` items (they are set to -inf in ``scores``); a row keeps fewer when fewer remain."""
    for row, items in enumerate(excluded):
        if items:
            scores[row, sorted(items)] = float("-inf")
    values, indices = scores.topk(min(k, scores.shape[1]), dim=1)
    return [[(i, v) for i, v in zip(idxs, vals) if v != float("-inf")]
            for vals, idxs in zip(values.tolist(), indices.tolist())]


def protocol(cfg: Config, split: Split, users: list[str], split_name: str, **extra) -> dict:
    return {
        "split": f"leave-one-out ({split_name}), time-ordered",
        "max_history": cfg.data.max_history,
        "catalog_size": len(split.catalog),
        "users": len(users),
        "user_sample": "all" if cfg.eval.users is None or cfg.eval.users >= len(split.eval_users)
        else f"seeded sample of {cfg.eval.users} (run.seed={cfg.run.seed})",
        "seen_items": "excluded from ranking" if cfg.decode.exclude_seen else "allowed",
        "identifier": cfg.items.identifier,
        "decoding": {"method": "trie-constrained beam search", "num_beams": cfg.decode.num_beams,
                     "length_penalty": cfg.decode.length_penalty, "batch_users": cfg.decode.batch_users,
                     "popularity_gamma": cfg.decode.popularity_gamma,
                     "contrastive_lambda": cfg.decode.contrastive_lambda,
                     "propensity_mix": cfg.decode.propensity_mix,
                     "trie_normalize": cfg.decode.trie_normalize, "members": cfg.decode.members},
        "dataset": cfg.data.dataset,
        "period": "all" if cfg.eval.period == "all" else f"{split_name} interaction at/after {cfg.data.time_cut}",
        "seed": cfg.run.seed,
        **extra,
    }


def score(rankings: dict[str, list], split: Split, users: list[str], split_name: str, ks: list[int],
          bias: bool = True, ips_clip: float = 100.0, seed: int = 0) -> dict:
    """Standard metrics, plus (``bias``) the popularity-bias ones of ``genrec.bias_metrics`` at K=10."""
    targets = [split.example(u, split_name, 1).target for u in users]
    lists = [[item for item, *_ in rankings[u]] for u in users]
    out = ranking_metrics(lists, targets, len(split.catalog), tuple(ks))
    if bias:
        out.update(bias_metrics(lists, targets, split.train_popularity(), 10, ips_clip, seed))
    return out


def baseline_metrics(cfg: Config, split: Split, users: list[str], split_name: str) -> dict:
    out = {}
    k = max(cfg.eval.ks)
    for name in cfg.eval.baselines:
        if name == "popularity":
            lists = most_popular_unseen(split, users, split_name, k, cfg.decode.exclude_seen)
            out["popularity"] = score({u: [(i,) for i in r] for u, r in zip(users, lists)}, split, users, split_name,
                                      cfg.eval.ks, ips_clip=cfg.eval.ips_clip, seed=cfg.run.seed)
    return out
