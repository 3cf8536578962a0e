"""Setup shared by every recipe, and the Recommender used by evaluate/recommend.

``prepare`` validates everything a user supplies — data, template, tokenizer,
identifiers — before any model weights are loaded. ``Recommender.load`` reuses
the template saved in the checkpoint (warning when the configured one differs)
and refuses a checkpoint whose item index no longer matches the catalog.
"""

from __future__ import annotations

import functools
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genrec.baselines import sasrec
from genrec.causal import rationale
from genrec.causal.priors import CausalPriors
from genrec.causal.rationale import RationaleBuilder
from genrec.config import Config
from genrec.data import Split, load_split
from genrec.data.splits import Example, training_examples
from genrec.decoding.ensemble import ensemble_topk, mean_item_log_probs, member_adapter, member_folders
from genrec.decoding.options import DecodeOptions, DecodingPrior
from genrec.decoding.search import NextTokenLogProbs, constrained_topk, greedy_lines
from genrec.errors import CheckpointError
from genrec.explain import statements
from genrec.explain.evidence import EvidenceBuilder
from genrec.explain.generation import explain
from genrec.explain.statements import Explainer
from genrec.items.index import ItemIndex
from genrec.items.semantic_ids import CODES_FILE, SemanticCodes, codes_for_run, llm_embeddings
from genrec.items.tokens import add_item_tokens, atomic_names, grow_embeddings
from genrec.model.loading import load_adapter, load_base_model, load_tokenizer, resolve_model_path
from genrec.paradigms import multitask, pointwise
from genrec.prompts.encoding import Encoder
from genrec.prompts.template import PromptFormatter, PromptTemplate
from genrec.training.checkpoint import TEMPLATE_FILE, read_info


@dataclass
class Setup:
    cfg: Config
    split: Split
    template: PromptTemplate
    tokenizer: object
    formatter: PromptFormatter
    encoder: Encoder
    index: ItemIndex
    model_path: Path
    item_tokens: list[int] | None = None  # atomic: the added token of each catalog item; semantic: every code token
    token_members: list[list[int]] | None = None  # semantic: the items whose code holds each of item_tokens
    codes: SemanticCodes | None = None  # semantic: every item's codes (saved with each checkpoint)

    def training_examples(self) -> list[Example]:
        """The run's training set: every example builder in turn (``EXAMPLE_BUILDERS``), starting from none."""
        examples: list[Example] = []
        for build in EXAMPLE_BUILDERS:
            examples = build(self, examples)
        return examples

    @functools.cached_property
    def explainer(self) -> Explainer:
        return Explainer(EvidenceBuilder(self.split, self.cfg.explain))

    def with_rationales(self, examples: list[Example]) -> list[Example]:
        """Reference rationales for evaluation examples (what the model would be taught to write for them)."""
        return RationaleBuilder(self.split, self.cfg.reason).attach(examples)

    def load_model(self, for_training: bool = False, device=None):
        """The base model on ``device`` (see ``genrec.model.loading.placement``), grown by one embedding row per added
        item token (atomic or semantic ids)."""
        model = load_base_model(self.cfg.model, self.model_path, for_training=for_training, device=device,
                                gradient_checkpointing=for_training and self.cfg.train.gradient_checkpointing)
        if self.item_tokens:
            vectors = sasrec.item_embeddings(self.cfg.items.sasrec_checkpoint, self.split) \
                if self.cfg.items.atomic_init == "sasrec" else None
            grow_embeddings(model, self.tokenizer, self.split.catalog, self.item_tokens, self.cfg.items.atomic_init,
                            self.cfg.run.seed, self.token_members, vectors)
        return model

    def checkpoint_files(self) -> dict[str, str]:
        """Files a checkpoint needs besides the adapter: the item codes of semantic ids."""
        return {CODES_FILE: self.codes.to_json()} if self.codes is not None else {}


def next_item_examples(setup: Setup, examples: list[Example]) -> list[Example]:
    """Example builder of the core, for templates that complete with the item: next-item windows
    (train.objective), a seeded sample of train.examples of them (kept in their order) when set."""
    if setup.template.answers:
        return examples
    cfg = setup.cfg
    windows = training_examples(setup.split, cfg.data, cfg.train.objective)
    n = cfg.train.examples
    if n is not None and n < len(windows):
        position = {id(ex): i for i, ex in enumerate(windows)}
        windows = sorted(random.Random(cfg.run.seed).sample(windows, n), key=lambda ex: position[id(ex)])
    return examples + windows


# Extension point: the training set is built by these, in order. Each takes the setup and the examples so far
# and returns them (extended, annotated or unchanged when its variant is off), checking its own settings.
EXAMPLE_BUILDERS = (pointwise.build_examples, next_item_examples, multitask.build_examples,
                    rationale.build_examples, statements.build_examples)


def prepare(cfg: Config, template: PromptTemplate | None = None, checkpoint: Path | None = None) -> Setup:
    """Everything but the weights. ``checkpoint``: the adapter folder whose item codes to reuse (semantic ids)."""
    split = load_split(cfg)
    template = template or PromptTemplate.load(cfg.prompt.template)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    codes, item_tokens, members = None, None, None
    if cfg.items.identifier == "semantic":
        def embed_with_llm(texts):
            return llm_embeddings(load_base_model(cfg.model, model_path), tokenizer, texts)

        codes = codes_for_run(split, cfg, checkpoint, embed_with_llm)
        split.catalog = split.catalog.with_semantic(codes.strings())
        names = codes.vocabulary()
        by_name = codes.members()
        item_tokens, members = add_item_tokens(tokenizer, names), [by_name[n] for n in names]
    elif cfg.items.identifier == "atomic":
        item_tokens = add_item_tokens(tokenizer, atomic_names(split.catalog))
    template.check(split.catalog, cfg.items.identifier)
    # titles (or plain ids) under the sequence objective: each history item is its own completion ids
    segmented = cfg.train.objective == "sequence" and item_tokens is None
    formatter = PromptFormatter(template, tokenizer, split.catalog, cfg.items.identifier, cfg.prompt.chat, split.ratings,
                                items_delimit=True if segmented else None)
    encoder = Encoder(formatter, cfg.train.max_length, item_tokens, codes.width if codes else 1, segmented)
    return Setup(cfg, split, template, tokenizer, formatter, encoder, encoder.item_index(), model_path, item_tokens,
                 members, codes)


def resolve_checkpoint(cfg: Config) -> Path | None:
    """run.checkpoint: null = <output_dir>/adapter, 'base' = no adapter, else a folder."""
    if cfg.run.checkpoint == "base":
        return None
    folder = Path(cfg.run.checkpoint) if cfg.run.checkpoint else Path(cfg.run.output_dir) / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise CheckpointError(
            f"no adapter checkpoint at {folder} (adapter_config.json missing): train first with recipes/finetune.py, "
            "point run.checkpoint at an adapter folder, or use run.checkpoint=base for the untuned model"
        )
    return folder


def checkpoint_template(cfg: Config, folder: Path | None) -> PromptTemplate | None:
    """The template a checkpoint was trained with; warns when the configured file differs."""
    if folder is None:
        return None
    saved = folder / TEMPLATE_FILE
    if not saved.is_file():
        raise CheckpointError(f"{folder}: {TEMPLATE_FILE} missing; genrec checkpoints store the template they were trained with")
    template = PromptTemplate(str(saved), saved.read_text(encoding="utf-8"))
    configured = Path(cfg.prompt.template)
    if configured.is_file() and PromptTemplate.load(configured).sha256 != template.sha256:
        warnings.warn(
            f"prompt.template {configured} differs from the template this checkpoint was trained with; "
            f"using the checkpoint's ({saved}, sha256 {template.sha256[:12]}) so inference matches training",
            stacklevel=2,
        )
    return template


def inference_device(cfg: Config, device=None) -> torch.device | None:
    """Where evaluate/recommend run the model: ``device`` (a recipe's accelerator device), else this machine's
    GPU when there is one, else the CPU; None when model.device_map spreads the model itself."""
    if cfg.model.device_map:
        return None
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class Ranking:
    """What one ``Recommender.rank`` call produced, aligned with its examples: per example the top-k (catalog
    index, score), best first, and (reason-then-recommend) the rationale line, as token ids, the items were
    decoded after; ``rationales`` is None when the template writes no rationale."""
    items: list[list[tuple[int, float]]]
    rationales: list[list[int]] | None


class Recommender:
    def __init__(self, model, setup: Setup, members: list[str] | None = None, options: DecodeOptions | None = None,
                 prior: DecodingPrior | None = None):
        """``options``: how ``rank`` decodes unless a call passes its own (default: the config's, read once here).
        ``prior``: the node prior added inside the search (default: the causal one, genrec.causal.priors)."""
        self.model, self.setup = model, setup
        # an ensemble's adapters (genrec.decoding.ensemble), all on ``model``; ranking switches between them, everything
        # else (explanations, rationales, the null prior) runs with the first
        self.members = members or [None]
        self.options = options or DecodeOptions.from_config(setup.cfg)
        self.prior = prior or CausalPriors(model, setup)

    @classmethod
    def load(cls, cfg: Config, check=None, device=None) -> tuple["Recommender", Path | None]:
        """Base model + adapter named by run.checkpoint, on ``device`` (see ``inference_device``);
        ``check(setup)`` runs before weights load.

        One adapter is merged into the base (one matmul per layer), unless the base is quantized. An
        ensemble's N adapters are loaded onto one copy of the base, not N copies."""
        folder = resolve_checkpoint(cfg)
        setup = prepare(cfg, checkpoint_template(cfg, folder), folder)
        if check is not None:
            check(setup)
        device = inference_device(cfg, device)
        model = setup.load_model(device=device)
        if folder is None:
            return cls(model.eval(), setup), folder
        folders = member_folders(folder)[: cfg.decode.members]  # one folder, or an ensemble's (genrec.decoding.ensemble)
        for member in folders:
            info = read_info(member)
            if info.get("item_index") != setup.index.fingerprint:
                raise CheckpointError(
                    f"{member}: the catalog or item identifiers changed since training (item index "
                    f"{info.get('item_index')} != {setup.index.fingerprint}); evaluate with the data/items config "
                    "the adapter was trained on"
                )
        if len(folders) == 1:
            model = load_adapter(model, folders[0])
            if cfg.model.quantization == "none":
                model = model.merge_and_unload()  # one matmul per layer at inference
            return cls(model.eval(), setup), folder
        names = [member_adapter(k) for k in range(len(folders))]
        for member, name in zip(folders, names):
            model = load_adapter(model, member, name=name)
        model.set_adapter(names[0])
        return cls(model.eval(), setup, names), folder

    def item_log_probs(self, prompts: list[list[int]], shared_prefix: bool = False) -> torch.Tensor:
        """[prompts, items]: log p(item | prompt) of one-token items (atomic ids) from one batched forward
        (an ensemble: the members' mean), without the decoding priors. ``shared_prefix``: the prompts share
        long prefixes with the first (read once, genrec.decoding.packed)."""
        return mean_item_log_probs(self.model, prompts, self.setup.index, self.setup.tokenizer.pad_token_id,
                                   self.members, self.next_logp, shared_prefix)

    @functools.cached_property
    def sasrec_model(self) -> sasrec.SASRec:
        """The SASRec of items.sasrec_checkpoint that decode.sasrec_weight weighs in, read at its first use, on the
        LLM's device (its scores join the LLM's there, batch by batch)."""
        device = next(self.model.parameters()).device
        return sasrec.trained_model(self.setup.cfg.items.sasrec_checkpoint, self.setup.split).to(device)

    def sasrec_log_probs(self, examples: list[Example]) -> torch.Tensor:
        """[examples, items]: SASRec's log p(item | the example's history); 0 for an empty history, which it cannot
        read (the LLM's score alone ranks a cold user)."""
        return sasrec.log_probs(self.sasrec_model, [ex.history for ex in examples])

    @functools.cached_property
    def next_logp(self) -> NextTokenLogProbs:
        """The model's next-token log-probabilities, with its fp32 output layer made once for every batch."""
        return NextTokenLogProbs(self.model)

    def rank(self, examples: list[Example], excluded: list[set[int]], k: int, options: DecodeOptions | None = None,
             progress: bool = False, desc: str = "decoding", prompts: list[list[int]] | None = None,
             rationales: list[list[int]] | None = None) -> Ranking:
        """Top-k per example, decoded as ``options`` say (default: ``self.options``); ``prompts`` (token ids) may
        be passed when already encoded.

        With a template that writes a rationale, each user's rationale line is generated first (greedy, at
        most options.rationale_max_new_tokens, ending at the first newline), or taken from ``rationales`` (token
        ids, e.g. another user's for the swap test), and the item is decoded after it; the result carries the
        lines used."""
        options = options or self.options
        setup, step = self.setup, options.batch_users
        prompts = prompts or [setup.encoder.prompt_ids(ex) for ex in examples]
        used = [] if setup.template.has_rationale else None
        out = []
        bar = tqdm(total=len(examples), desc=desc, disable=not progress, unit="user")
        for lo in range(0, len(examples), step):
            batch = prompts[lo: lo + step]
            if used is not None:
                lines = rationales[lo: lo + step] if rationales is not None else self._rationales(batch, options)
                used += lines
                batch = [p + line for p, line in zip(batch, lines)]
            prior = self.prior.node_prior(options)  # per batch, none for an empty shard: it may run the model
            if len(self.members) > 1 or options.sasrec_weight:
                # one-token items: num_beams and length_penalty change nothing there (ensemble_topk says why)
                added = options.sasrec_weight * self.sasrec_log_probs(examples[lo: lo + step]) \
                    if options.sasrec_weight else None
                out += ensemble_topk(self.model, batch, setup.index, k, excluded[lo: lo + step],
                                     setup.tokenizer.pad_token_id, prior, self.members, self.next_logp,
                                     trie_normalize=options.trie_normalize, added=added)
            else:
                out += constrained_topk(
                    self.model, batch, setup.index, k=k,
                    num_beams=max(options.num_beams, k), excluded=excluded[lo: lo + step],
                    length_penalty=options.length_penalty, pad_id=setup.tokenizer.pad_token_id,
                    node_prior=prior, trie_normalize=options.trie_normalize, next_logp=self.next_logp,
                )
            bar.update(len(batch))
        bar.close()
        return Ranking(out, used)

    def _rationales(self, prompts: list[list[int]], options: DecodeOptions) -> list[list[int]]:
        encoder = self.setup.encoder
        lines = greedy_lines(self.model, prompts, encoder.newline_tokens(), options.rationale_max_new_tokens,
                             self.setup.tokenizer.pad_token_id)
        ending = encoder.rationale_ids("")  # the newline, for a line cut off at the token limit
        stops = set(encoder.newline_tokens().tolist())
        return [line if line and line[-1] in stops else line + ending for line in lines]

    def decode_rationale(self, ids: list[int]) -> str:
        return self.setup.tokenizer.decode(ids).strip()

    def explain(self, examples: list[Example], items: list[int], decoding: str | None = None,
                progress: bool = False) -> list[str]:
        """The explanation of ``items[i]`` for ``examples[i]`` (genrec.explain.generation; explain.* settings)."""
        return explain(self, examples, items, decoding, progress)
