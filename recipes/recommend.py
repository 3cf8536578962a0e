"""Top-K recommendations for one user, or for a history given on the command line.

    python recipes/recommend.py --config recipes/configs/ml100k/smollm2_lora.yaml recommend.user_id=1
    python recipes/recommend.py --config ... "recommend.history=Toy Story (1995)|Heat (1995)|Fargo (1996)"
    python recipes/recommend.py --config recipes/configs/ml100k/smollm2_atomic.yaml recommend.user_id=1 explain=true

Writes ``recommendations.jsonl`` (rows ``{user_id, rank, item_id, title, score}``, plus ``explanation``,
``claims``, ``claims_true`` — its claims as genrec.explain.verify parses and checks them — and ``cited``
with ``explain=true`` / ``recommend.explain=true``: the model's own top-K, each item explained by
genrec.explain.top_k) in run.output_dir and prints a table. Every item is a real catalog item; items in
the history are never recommended (decode.exclude_seen).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.config import load_config, parse_cli
from genrec.data.catalog import Catalog
from genrec.data.splits import Example, Split
from genrec.errors import ConfigError, DataError, suggest
from genrec.explain.top_k import RankingExplainer, explanation_template
from genrec.io import atomic_write_text
from genrec.recommender import Recommender
from genrec.runtime import run, set_threads, setup_logging


def request(cfg, split: Split) -> Example:
    """The user's most recent history (user_id) or the given titles/ids (history), validated."""
    if cfg.recommend.user_id is not None and cfg.recommend.history:
        raise ConfigError("set recommend.user_id or recommend.history, not both")
    if cfg.recommend.user_id is not None:
        user = str(cfg.recommend.user_id)
        if user not in split.sequences:
            raise DataError(f"recommend.user_id: unknown user {user!r}{suggest(user, split.sequences)}")
        seq = split.sequences[user]
        return Example(user, tuple(seq[-cfg.data.max_history:]), None)
    if cfg.recommend.history:
        catalog: Catalog = split.catalog
        # every unknown title in one error, each with its close matches (substring, shared words, spelling)
        items = tuple(it.index for it in catalog.find_all(cfg.recommend.history, what="recommend.history"))
        return Example("cli", items[-cfg.data.max_history:], None)
    raise ConfigError("say who to recommend for: recommend.user_id=ID or recommend.history='Title (Year)|Title (Year)'")


def main(argv: list[str]) -> list[dict]:
    # `explain=true` is short for recommend.explain=true
    argv = [f"recommend.{a}" if a.split("=", 1)[0] == "explain" else a for a in argv]
    cfg = load_config(*parse_cli(argv))
    set_threads()
    setup_logging()
    asked: list[Example] = []
    # the request is validated against the data before any weights load
    def check(setup) -> None:
        if setup.template.answers:
            raise ConfigError(f"{setup.template.source} is pointwise: it answers yes/no about one item rather than "
                              "generating items; score it with recipes/evaluate.py (AUC)")
        asked.append(request(cfg, setup.split))
        if cfg.recommend.explain:
            explanation_template(setup)

    recommender, _ = Recommender.load(cfg, check=check)
    example = asked[0]
    split = recommender.setup.split
    seen = set(split.sequences.get(example.user_id, example.history)) | set(example.history)
    ranking = recommender.rank([example], [seen if recommender.options.exclude_seen else set()], cfg.recommend.k)
    ranked = ranking.items[0]
    why = {"rationale": recommender.decode_rationale(ranking.rationales[0])} if ranking.rationales is not None else {}
    rows = [{"user_id": example.user_id, "rank": r, "item_id": split.catalog[i].item_id,
             "title": split.catalog[i].text, "score": round(s, 4), **why} for r, (i, s) in enumerate(ranked, start=1)]
    if cfg.recommend.explain:  # the model's own ranking, each item with its grounded line (genrec.explain.top_k)
        for row, explained in zip(rows, RankingExplainer(recommender)(example, ranked)):
            row.update(explanation=explained.explanation, claims=len(explained.claims),
                       claims_true=explained.claims_true, cited=[split.catalog[i].text for i in explained.cited])
    out = Path(cfg.run.output_dir) / "recommendations.jsonl"
    atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
    print(f"history of {example.user_id} (most recent last):")
    for i in example.history[-5:]:
        print(f"    {split.catalog[i].text}")
    if why:
        print(f"rationale: {why['rationale']}")
    print(f"top-{cfg.recommend.k}:")
    for row in rows:
        print(f"  {row['rank']:>2}. {row['title']:<60} {row['score']:9.3f}")
        if "explanation" in row:
            print(f"      because: {row['explanation']}  [{row['claims_true']}/{row['claims']} claims true]")
    print(f"written to {out}")
    return rows


if __name__ == "__main__":
    sys.exit(run(main))
