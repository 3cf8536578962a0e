"""The ``genrec`` command: prompt tools, data summary and results tables.

    genrec prompts validate prompts/next_item_title.yaml
    genrec prompts render --config recipes/configs/ml100k/smollm2_lora.yaml --n 3 [section.key=value ...]
    genrec data --config recipes/configs/ml100k/smollm2_lora.yaml
    genrec results runs/demo/base/eval_results.json runs/demo/tuned/eval_results.json
    genrec explanations --config recipes/configs/ml100k/smollm2_explain.yaml --split test --out test.jsonl
    genrec serve --config recipes/configs/ml100k/smollm2_atomic.yaml run.output_dir=runs/demo/tuned [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genrec.config import load_config
from genrec.errors import GenrecError


def _validate(args) -> None:
    from genrec.config import Config
    from genrec.data import load_split
    from genrec.prompts.template import PromptTemplate

    for path in args.files:
        template = PromptTemplate.load(path)
        if args.config:
            cfg = load_config(args.config, [])
            # semantic codes are made from item embeddings (genrec.items.semantic_ids); validating a template needs
            # no model, so it renders atomic tokens in their place: both are strings of added tokens
            identifier = "atomic" if cfg.items.identifier == "semantic" else cfg.items.identifier
            template.check(load_split(cfg).catalog, identifier)
        else:
            template.check(_toy_catalog(), Config().items.identifier)
        print(f"{path}: ok ({template.name}, sha256 {template.sha256[:12]})")


def _toy_catalog():
    from genrec.data.catalog import Catalog

    return Catalog.build(["1", "2", "3"], None, "{item_id}", "item_{item_id}")


def _render(args) -> None:
    from genrec.recommender import prepare

    cfg = load_config(args.config, args.overrides)
    setup = prepare(cfg)
    examples = setup.training_examples()
    tok = setup.tokenizer
    for n, example in enumerate(examples[: args.n], start=1):
        enc = setup.encoder.encode(example)
        ids, on = enc["input_ids"], [lab != -100 for lab in enc["labels"]]
        loss = [t for t, keep in zip(ids, on) if keep]
        print(f"===== example {n}: user {example.user_id}, {len(ids) - len(loss)} tokens without loss, "
              f"{len(loss)} with loss =====")
        text, start = "", 0
        for end in range(1, len(ids) + 1):  # runs of tokens with the same loss flag, loss runs inside » «
            if end == len(ids) or on[end] != on[start]:
                piece = tok.decode(ids[start:end])
                text += f"\u00bb{piece}\u00ab" if on[start] else piece
                start = end
        print(text)
        print("loss on:", " ".join(repr(t) for t in tok.convert_ids_to_tokens(loss)))
        print()
    print(f"template {setup.template.source} (sha256 {setup.template.sha256[:12]}); chat template "
          f"{'on' if setup.formatter.use_chat else 'off'}; text between \u00bb \u00ab carries the loss")


def _data(args) -> None:
    from genrec.data import load_split, training_examples
    from genrec.data.splits import describe

    cfg = load_config(args.config, args.overrides)
    split = load_split(cfg)
    stats = describe(split)
    stats["train_windows"] = len(training_examples(split, cfg.data, cfg.train.objective))
    print(json.dumps(stats, indent=2))


def _explanations(args) -> None:
    """The reference explanation records of a split: (user, item, rating, feature, explanation), the
    PETER / PEPLER layout, plus the family and the history items cited — built from the data, no model."""
    from genrec.data import load_split
    from genrec.data.splits import sliding_windows
    from genrec.explain.evidence import EvidenceBuilder
    from genrec.explain.statements import Explainer
    from genrec.io import atomic_write_text

    cfg = load_config(args.config, args.overrides)
    split = load_split(cfg)
    explainer = Explainer(EvidenceBuilder(split, cfg.explain))
    if args.split == "train":
        examples = sliding_windows(split, cfg.data.max_history, cfg.data.min_history, cfg.data.train_windows_per_user)
    else:
        examples = [split.example(u, args.split, cfg.data.max_history) for u in split.eval_users]
    rows = []
    for ex in examples:
        ev = explainer.evidence.build(ex.user_id, ex.history, ex.target)
        ref = explainer.oracle(ev)
        if ref is not None:
            item = split.catalog[ex.target]
            rows.append({"user": ex.user_id, "item": item.item_id, "title": item.text, "rating": ev.rating,
                         "feature": ref.feature, "explanation": ref.text, "family": ref.family,
                         "cited": [split.catalog[h].item_id for h in ref.cited]})
    atomic_write_text(Path(args.out), "".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} records ({len(examples) - len(rows)} pairs without a true statement) written to {args.out}")


def _serve(args) -> None:
    from genrec.runtime import set_threads, setup_logging
    from genrec.serving.app import serve

    set_threads()
    setup_logging()
    serve(load_config(args.config, args.overrides), args.host, args.port, args.max_request_bytes, args.batch_wait_ms)


def results_table(paths: list[str]) -> str:
    """One row per eval_results.json, plus most-popular-unseen on each distinct user set (same users, same code)."""
    rows, popularity = [], {}
    for path in paths:
        res = json.loads(Path(path).read_text())
        proto = res["protocol"]
        if proto.get("model") == "SASRec":  # recipes/sasrec.py
            name = "SASRec"
        else:
            name = "untuned base model" if not proto.get("adapter") else "tuned model"
        rows.append((name, res["metrics"], proto["users"]))
        if "popularity" in res.get("baselines", {}):
            popularity.setdefault(proto["users"], ("most-popular-unseen", res["baselines"]["popularity"], proto["users"]))
    rows = list(popularity.values()) + rows
    cols = ["hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20", "valid_item_rate", "duplicate_rate", "coverage@10"]
    lines = [f"{'system':<22}{'users':>6}" + "".join(f"{c:>16}" for c in cols)]
    for name, m, users in rows:
        lines.append(f"{name:<22}{users:>6}" + "".join(f"{m[c]:>16.4f}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prompts = sub.add_parser("prompts", help="validate or render prompt templates").add_subparsers(dest="action", required=True)
    v = prompts.add_parser("validate", help="check template files (YAML, Jinja2, variables)")
    v.add_argument("files", nargs="+")
    v.add_argument("--config", help="check against this config's real catalog")
    v.set_defaults(func=_validate)
    r = prompts.add_parser("render", help="show exactly what the model reads and which tokens carry loss")
    r.add_argument("--config", required=True)
    r.add_argument("--n", type=int, default=3)
    r.add_argument("overrides", nargs="*")
    r.set_defaults(func=_render)
    d = sub.add_parser("data", help="summarise the configured data and split")
    d.add_argument("--config", required=True)
    d.add_argument("overrides", nargs="*")
    d.set_defaults(func=_data)
    x = sub.add_parser("explanations", help="write the reference explanation records of a split (no model)")
    x.add_argument("--config", required=True)
    x.add_argument("--split", choices=("train", "valid", "test"), default="test")
    x.add_argument("--out", required=True)
    x.add_argument("overrides", nargs="*")
    x.set_defaults(func=_explanations)
    v = sub.add_parser("serve", help="serve recommendations (HTTP API and page) from a checkpoint, loaded once")
    v.add_argument("--config", required=True)
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-request-bytes", type=int, default=65536, help="larger request bodies get 413")
    v.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a ranking waits for concurrent requests to share its forward pass")
    v.add_argument("overrides", nargs="*")
    v.set_defaults(func=_serve)
    c = sub.add_parser("config-reference", help="print the config reference (every key, default, meaning) as markdown")
    c.set_defaults(func=lambda a: print(__import__("genrec.config_reference", fromlist=["markdown"]).markdown(), end=""))
    t = sub.add_parser("results", help="table of eval_results.json files")
    t.add_argument("files", nargs="+")
    t.set_defaults(func=lambda a: print(results_table(a.files)))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except GenrecError as e:
        print(f"genrec: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
