"""Evaluation under the fixed protocol (docs/protocol.md), sharded over processes.

What is evaluated is a list of cases (``genrec.data.splits.Case``): leave-one-out has one per
user (its id is the user id, so every output keyed by case is keyed by user as before); the
temporal and files protocols have one per validation/test row, each with its own history, and
metrics average over rows. Cases are ordered by prompt length and cut into fixed batches *before*
sharding; process r decodes batches r, r+W, r+2W, ... So every case is decoded in the same batch
whatever the number of processes, and results are identical to a single process.
"""

from __future__ import annotations

import json
import random

from tqdm.auto import tqdm

from genrec.config import Config
from genrec.data.splits import Case, Split
from genrec.decoding.options import DecodeOptions
from genrec.errors import DataError
from genrec.evaluation.bias import bias_metrics
from genrec.evaluation.metrics import ranking_metrics
from genrec.evaluation.stream import RankingStream


def evaluation_cases(split: Split, n: int | None, seed: int, after: float | None = None,
                     split_name: str = "test") -> list[Case]:
    """Cases evaluated (all, or a seeded sample of ``n``, kept in order); with ``after`` (eval.period=after:
    data.time_cut) only those whose target is at or after that time."""
    cases = split.cases(split_name)
    if after is not None:
        cases = [c for c in cases if c.time >= after]
        if not cases:
            raise DataError(f"no {split_name} interaction is at or after data.time_cut; move the cut earlier")
    if n is None or n >= len(cases):
        return cases
    position = {id(c): i for i, c in enumerate(cases)}
    return sorted(random.Random(seed).sample(cases, n), key=lambda c: position[id(c)])


def evaluation_users(split: Split, n: int | None, seed: int, after: float | None = None,
                     split_name: str = "test") -> list[str]:
    """Leave-one-out: the users evaluated (``evaluation_cases``' users, one case each)."""
    if split.protocol != "leave_one_out":
        raise DataError(f"data.split={split.protocol} evaluates rows, several per user: use evaluation_cases")
    return [c.user_id for c in evaluation_cases(split, n, seed, after, split_name)]


def as_cases(split: Split, entries: list, split_name: str) -> list[Case]:
    """Cases as they are, user ids as their leave-one-out case of ``split_name``."""
    return [e if isinstance(e, Case) else split.user_case(e, split_name) for e in entries]


def period_start(cfg: Config) -> float | None:
    """eval.period=after: the data.time_cut evaluated users' interactions must reach; None = every user."""
    return cfg.data.time_cut_seconds if cfg.eval.period == "after" else None


def shard_batches(lengths: list[int], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches (positions into the user list) of a fixed global batching."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[lo: lo + batch_size] for lo in range(0, len(order), batch_size)]
    return batches[rank::world]


def rank_cases(recommender, cases: list[Case], split_name: str, k: int, rank: int = 0, world: int = 1,
               progress: bool = False, rationales: dict | None = None,
               options: DecodeOptions | None = None,
               stream: RankingStream | None = None) -> dict[str, list[tuple[int, float]]]:
    """Top-k for the cases of this shard, keyed by case id, decoded as ``options`` say (default: the
    recommender's); ``rationales`` collects each case's written rationale when the template has one. Seen
    items (each case's history) are left out under exclude_seen; otherwise the trie admits them, and each list
    still holds distinct catalog items.

    ``stream``: the cases already on disk for this run are taken from there (and returned with this shard's),
    only the rest is ranked and sharded, and each finished batch is appended to this process's partial file
    (genrec.evaluation.stream). A resumed run batches the remaining cases anew."""
    setup = recommender.setup
    options = options or recommender.options
    done, done_why = stream.load() if stream is not None else ({}, {})
    if done:
        cases = [c for c in cases if c.case_id not in done]
        if rationales is not None:
            rationales.update(done_why)
    max_history = setup.cfg.data.max_history
    examples = [setup.split.case_example(c, max_history) for c in cases]
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    mine = [i for batch in shard_batches([len(p) for p in prompts], options.batch_users, rank, world) for i in batch]
    unit = "users" if setup.split.protocol == "leave_one_out" else "rows"
    step = max(1, options.batch_users)  # the batches shard_batches made: one recommender.rank call each
    handle = stream.open() if stream is not None else None
    bar = tqdm(total=len(mine), desc=f"{split_name} {unit} (process {rank})", disable=not progress, unit=unit[:-1])
    out = dict(done)
    try:
        for lo in range(0, len(mine), step):
            part = mine[lo: lo + step]
            ranked = recommender.rank(
                [examples[i] for i in part],
                [setup.split.case_seen(cases[i]) if options.exclude_seen else set() for i in part],
                k, options, prompts=[prompts[i] for i in part],
            )
            why = {}
            if ranked.rationales is not None:
                why = {cases[i].case_id: recommender.decode_rationale(r) for i, r in zip(part, ranked.rationales)}
                if rationales is not None:
                    rationales.update(why)
            ranking = {cases[i].case_id: r for i, r in zip(part, ranked.items)}
            out.update(ranking)
            if handle is not None:
                RankingStream.append(handle, ranking, why)
            bar.update(len(part))
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    return out


def rank_users(recommender, users: list[str], split_name: str, k: int, rank: int = 0, world: int = 1,
               progress: bool = False, rationales: dict | None = None,
               options: DecodeOptions | None = None) -> dict[str, list[tuple[int, float]]]:
    """Leave-one-out: ``rank_cases`` over the users' cases, keyed by user id."""
    return rank_cases(recommender, as_cases(recommender.setup.split, users, split_name), split_name, k, rank, world,
                      progress, rationales, options)



def protocol(cfg: Config, split: Split, users: list, split_name: str, **extra) -> dict:
    """eval_results.json's protocol. ``users``: the evaluated cases (or leave-one-out user ids). Leave-one-out
    records what it always has; the temporal and files protocols record their rows (every case is one), the
    users they belong to, the cut (temporal_ratios or files) and the cutoffs K."""
    if split.protocol != "leave_one_out":
        cases = as_cases(split, users, split_name)
        every = len(split.cases(split_name))
        rows = {
            "split": f"{split.description} ({split_name})",
            "rows": len(cases),
            "users": len({c.user_id for c in cases}),
            "row_sample": "all" if len(cases) >= every else f"seeded sample of {len(cases)} of {every} rows "
                                                            f"(run.seed={cfg.run.seed})",
            "metrics_over": "rows",
            "ks": list(cfg.eval.ks),
            **({"temporal_ratios": list(cfg.data.temporal_ratios)} if split.protocol == "temporal" else
               {"files": {"train": cfg.data.train_file, "valid": cfg.data.valid_file, "test": cfg.data.test_file}}),
        }
    else:
        rows = {
            "split": f"leave-one-out ({split_name}), time-ordered",
            "users": len(users),
            "user_sample": "all" if cfg.eval.users is None or cfg.eval.users >= len(split.eval_users)
            else f"seeded sample of {cfg.eval.users} (run.seed={cfg.run.seed})",
        }
    return {
        "split": rows.pop("split"),
        "max_history": cfg.data.max_history,
        "catalog_size": len(split.catalog),
        **rows,
        "seen_items": "excluded from ranking" if cfg.decode.exclude_seen else "allowed",
        "identifier": cfg.items.identifier,
        "decoding": {"method": "trie-constrained beam search", "num_beams": cfg.decode.num_beams,
                     "length_penalty": cfg.decode.length_penalty, "batch_users": cfg.decode.batch_users,
                     "popularity_gamma": cfg.decode.popularity_gamma,
                     "contrastive_lambda": cfg.decode.contrastive_lambda,
                     "propensity_mix": cfg.decode.propensity_mix,
                     **({"propensity_temperature": cfg.decode.propensity_temperature}
                        if cfg.decode.propensity_mix else {}),
                     "trie_normalize": cfg.decode.trie_normalize, "members": cfg.decode.members,
                     **({"sasrec_weight": cfg.decode.sasrec_weight, "sasrec_checkpoint": cfg.items.sasrec_checkpoint}
                        if cfg.decode.sasrec_weight else {})},
        "dataset": cfg.data.dataset,
        "period": "all" if cfg.eval.period == "all" else f"{split_name} interaction at/after {cfg.data.time_cut}",
        "seed": cfg.run.seed,
        **extra,
    }


def score_cases(rankings: dict[str, list], split: Split, cases: list[Case], ks: list[int], bias: bool = True,
                ips_clip: float = 100.0, seed: int = 0) -> dict:
    """Standard metrics averaged over cases (``rankings`` keyed by case id), plus (``bias``) the
    popularity-bias ones of ``genrec.evaluation.bias`` at K=10. Temporal/files: ``rows`` = cases, ``users``
    = the distinct users they belong to."""
    targets = [c.target for c in cases]
    lists = [[item for item, *_ in rankings[c.case_id]] for c in cases]
    out = ranking_metrics(lists, targets, len(split.catalog), tuple(ks))
    if bias:
        out.update(bias_metrics(lists, targets, split.train_popularity(), 10, ips_clip, seed))
    if split.protocol != "leave_one_out":
        out["rows"] = len(cases)
        out["users"] = len({c.user_id for c in cases})
    return out


def score(rankings: dict[str, list], split: Split, users: list, split_name: str, ks: list[int],
          bias: bool = True, ips_clip: float = 100.0, seed: int = 0) -> dict:
    """``score_cases`` over cases, or leave-one-out user ids (``rankings`` keyed by user id)."""
    return score_cases(rankings, split, as_cases(split, users, split_name), ks, bias, ips_clip, seed)



def rankings_jsonl(split: Split, cases: list[Case], rankings: dict[str, list], extra: dict | None = None) -> str:
    """rankings.jsonl: one line per case, the top-K item ids and scores; leave-one-out lines are keyed by
    ``user_id`` alone, the others carry ``case_id`` and ``user_id``. ``extra``: per case id, fields to add."""
    extra = extra or {}
    lines = []
    for c in cases:
        key = {"user_id": c.user_id} if split.protocol == "leave_one_out" else {"case_id": c.case_id,
                                                                                  "user_id": c.user_id}
        lines.append(json.dumps({**key, "items": [split.catalog[i].item_id for i, _ in rankings[c.case_id]],
                                 "scores": [round(s, 4) for _, s in rankings[c.case_id]],
                                 **({"rationale": extra[c.case_id]} if c.case_id in extra else {})}) + "\n")
    return "".join(lines)
