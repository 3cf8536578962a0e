"""Ensembles of independently trained adapters (train.ensemble = N > 1).

Why: on ml-100k one run of the atomic recipe moves by about 0.009 test NDCG@10 from seed to seed,
and its training budget (60 minutes on 2 cores) fits three such runs. Averaging the members'
log-probabilities removes much of that run-to-run noise (BENCHMARKS.md, Quality).

Layout: member 0 is an ordinary run in ``run.output_dir`` (seed ``run.seed``); member k trains in
``<output_dir>/members/<k>/`` with seed ``run.seed + 1000 * k`` (far apart, so that the members of
seed 42 and of seed 43 never share a run). Once every member is done their adapters are copied into
``<output_dir>/adapter/members/<k>/`` and listed in ``<output_dir>/adapter/ensemble.json``: the adapter
folder stays self-contained, and loading it loads every member.

Scoring: an item's score is the mean over members of log p(item | prompt) (a product of experts,
renormalised by nothing: the ranking only needs the sum). Atomic ids only, where an item is one token
and that mean is exact; several tokens per item would need every member's cache inside the beam search.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from genrec.config import Config
from genrec.decoding.packed import supports_packing
from genrec.decoding.search import NextTokenLogProbs, next_token_log_probs_sharing_prefixes, top_k_unseen
from genrec.errors import CheckpointError
from genrec.io import atomic_folder, atomic_write_text
from genrec.items.index import ItemIndex
from genrec.training.batching import prompt_inputs
from genrec.training.checkpoint import STATE_DIR

MANIFEST = "ensemble.json"
MEMBERS_DIR = "members"
SEED_STRIDE = 1000


def member_seed(seed: int, k: int) -> int:
    return seed + SEED_STRIDE * k


def member_configs(cfg: Config) -> list[Config]:
    """The run config of each member: member 0 is ``cfg`` itself; the others differ in seed and output
    folder, share the tokenized-data cache (its key is the content) and are single runs themselves."""
    out = Path(cfg.run.output_dir)
    configs = [cfg]
    for k in range(1, cfg.train.ensemble):
        member = copy.deepcopy(cfg)
        member.run.seed = member_seed(cfg.run.seed, k)
        member.run.output_dir = str(out / MEMBERS_DIR / str(k))
        member.data.cache_dir = cfg.data.cache_dir or str(out / "cache")
        member.train.ensemble = 1
        configs.append(member)
    return configs


def assemble(output_dir: str | Path, members: int, seed: int) -> Path:
    """Copy members 1..N-1's adapters into ``<output_dir>/adapter/members/`` and write the manifest last,
    so that an interrupted copy never leaves a manifest that names a missing member."""
    adapter = Path(output_dir) / "adapter"
    for k in range(1, members):
        src = Path(output_dir) / MEMBERS_DIR / str(k) / "adapter"
        if not (src / "adapter_config.json").is_file():
            raise CheckpointError(f"ensemble member {k}: no finished adapter at {src}; train it first "
                                  "(recipes/finetune.py with run.resume=true continues where it stopped)")
        with atomic_folder(adapter / MEMBERS_DIR / str(k)) as tmp:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(STATE_DIR))  # the optimizer state is for resuming
    manifest = {"members": [f"{MEMBERS_DIR}/{k}" for k in range(1, members)],
                "seeds": [member_seed(seed, k) for k in range(members)],
                "scoring": "mean over members of log p(item | prompt)"}
    atomic_write_text(adapter / MANIFEST, json.dumps(manifest, indent=2))
    return adapter


def member_folders(folder: Path) -> list[Path]:
    """The adapter folders of a checkpoint: itself, then the members its manifest lists (if any)."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return [Path(folder)]
    try:
        listed = json.loads(manifest.read_text())["members"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest}: not a genrec ensemble manifest ({e}); expected "
                              '{"members": ["members/1", ...]}') from None
    folders = [Path(folder) / name for name in listed]
    for sub in folders:
        if not (sub / "adapter_config.json").is_file():
            raise CheckpointError(f"{manifest} lists {sub}, which holds no adapter (adapter_config.json missing)")
    return [Path(folder), *folders]


def member_adapter(k: int) -> str:
    """The peft adapter name of member k when the members share one base model."""
    return f"member{k}"


def _one_token_items(index: ItemIndex) -> None:
    if index.max_depth != 1:
        raise CheckpointError("an ensemble of adapters ranks one-token items only (items.identifier=atomic); "
                              "this catalog's identifiers take several tokens")


@torch.no_grad()
def item_log_probs(next_logp: NextTokenLogProbs, prompts: list[list[int]], index: ItemIndex,
                   pad_id: int = 0, shared_prefix: bool = False) -> torch.Tensor:
    """[prompts, items]: log p(item | prompt) over the whole vocabulary, column i = catalog item i (one-token
    items), from one left-padded forward pass of the batch; with ``shared_prefix`` (prompts that share long
    prefixes with the first) from one packed forward that reads each shared prefix once."""
    _one_token_items(index)
    device = next(next_logp.model.parameters()).device
    if shared_prefix and supports_packing(next_logp.model):
        logp = next_token_log_probs_sharing_prefixes(next_logp, prompts)
        return logp[:, index.on(logp.device).first_token]
    tokens = index.on(device).first_token
    logp, _ = next_logp(**prompt_inputs(prompts, pad_id, device), use_cache=False)
    return logp[:, tokens.to(logp.device)]


@torch.no_grad()
def mean_item_log_probs(model, prompts: list[list[int]], index: ItemIndex, pad_id: int = 0,
                        adapters: list[str | None] | None = None, next_logp: NextTokenLogProbs | None = None,
                        shared_prefix: bool = False, trie_normalize: bool = False) -> torch.Tensor:
    """[prompts, items]: the members' mean log p(item | prompt). ``adapters``: the members' adapter names on
    ``model`` (a peft model carrying all of them), each activated in turn for its forward pass; the first
    is active again afterwards. None: ``model`` alone. ``trie_normalize``: each member's log p(item | prompt,
    the output is a catalog item) instead, as decode.trie_normalize makes the search score one model."""
    _one_token_items(index)
    adapters = adapters or [None]
    next_logp = next_logp or NextTokenLogProbs(model)
    score = None
    for name in adapters:
        if name is not None:
            model.set_adapter(name)
        logp = item_log_probs(next_logp, prompts, index, pad_id, shared_prefix)
        if trie_normalize:  # the root's children are every item's one token
            logp = logp - logp.logsumexp(dim=1, keepdim=True)
        score = logp if score is None else score + logp
    if adapters[0] is not None:
        model.set_adapter(adapters[0])
    return score / len(adapters)


@torch.no_grad()
def item_prior(node_prior: torch.Tensor, index: ItemIndex) -> torch.Tensor:
    """[items] fp32: what a node prior adds to each one-token item's score (its leaf's value minus the root's),
    as the constrained search adds it along the item's path."""
    prior = node_prior.to(dtype=torch.float32)
    return prior[index.item_path[:, 0].to(prior.device)] - prior[0]


def ensemble_topk(model, prompts: list[list[int]], index: ItemIndex, k: int,
                  excluded: list[set[int]] | None = None, pad_id: int = 0,
                  node_prior: torch.Tensor | None = None, adapters: list[str | None] | None = None,
                  next_logp: NextTokenLogProbs | None = None, trie_normalize: bool = False,
                  added: torch.Tensor | None = None) -> list[list[tuple[int, float]]]:
    """Top-``k`` items per prompt, best first, as (catalog index, score): what ``constrained_topk`` gives one
    model, with the members' mean log p(item | prompt) (``mean_item_log_probs``, renormalised over the catalog
    with ``trie_normalize``) in place of its log p, plus the node prior's leaf-minus-root, plus ``added``
    ([prompts, items], another model's weighted log-probabilities: decode.sasrec_weight).

    The search's other settings change nothing here, so they are not asked for: an item is one token, every
    item finishes at the first step (num_beams bounds only the beams still going) and its length is 1
    (length_penalty divides by 1 ** p)."""
    score = mean_item_log_probs(model, prompts, index, pad_id, adapters, next_logp, trie_normalize=trie_normalize)
    if node_prior is not None:
        score += item_prior(node_prior, index).to(score.device)
    if added is not None:
        score += added.to(device=score.device, dtype=score.dtype)
    return top_k_unseen(score, excluded or [], k)
