"""Fine-tune a decoder LLM with an adapter to generate the next item.

    python recipes/finetune.py --config recipes/configs/ml100k/smollm2_lora.yaml [section.key=value ...]
    accelerate launch --multi_gpu --num_processes 4 recipes/finetune.py --config ...   # DDP on 4 GPUs
    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/finetune.py --config ...
    torchrun --nproc_per_node 2 recipes/finetune.py --config ...  # 2 CPU processes (gloo)
    python recipes/finetune.py --config ... run.resume=true      # continue exactly where it stopped

Setup (validate data/template, tokenize, load model, attach adapter) → train
(loss on the completion only, grad accumulation, clipping, schedule, periodic
validation) → save (atomic checkpoints with adapter, optimizer/scheduler/RNG state,
config and prompt template). With train.ensemble = N > 1 the same run is repeated for members
1..N-1 (seeds run.seed + 1000k, in <output_dir>/members/<k>/), then their adapters are copied into
<output_dir>/adapter/ (genrec.decoding.ensemble); run.resume=true resumes whichever member was interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from genrec import __version__
from genrec.causal.counterfactual import CounterfactualLoss, NullHistory
from genrec.causal.popularity import PopularityPriorLoss, candidate_prior, training_weights
from genrec.config import load_config, parse_cli, save_config
from genrec.decoding.ensemble import assemble, member_configs
from genrec.errors import CheckpointError, ConfigError, DataError
from genrec.evaluation.protocol import evaluation_cases, period_start, rank_cases, score_cases
from genrec.model.loading import attach_adapter, resolve_dtype
from genrec.paradigms.multitask import label_weights
from genrec.paradigms.pointwise import answer_token_ids, evaluation_examples, preference_scores, roc_auc, sharded_scores
from genrec.paradigms.preference import SoftmaxDPO
from genrec.prompts.encoding import IGNORE_INDEX, tokenize_workers, tokenized_dataset, training_data_fingerprint
from genrec.recommender import Recommender, prepare
from genrec.runtime import make_accelerator, model_device, peak_rss_mb, run, set_threads, setup_logging
from genrec.training import sharding
from genrec.training.batching import epoch_batches, to_device
from genrec.training.checkpoint import (
    STATE_DIR,
    checkpoint_dirs,
    load_training_state,
    prune_checkpoints,
    read_info,
    rng_state,
    write_checkpoint,
)
from genrec.training.loss import CrossEntropy, LossTerm, TrainingObjective, training_batch
from genrec.training.metrics_log import MetricsLog

log = logging.getLogger("genrec")
BEST_DIR = "best"  # train.select_best: the weights of the best validation so far


def build_scheduler(name: str, optimizer, warmup: int, total: int, advance: int = 0):
    """The learning-rate schedule over ``total`` steps, moved on by ``advance`` steps already taken (a run
    cut to its time budget re-plans its schedule part-way)."""
    import warnings

    from transformers import get_scheduler

    kind = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[name]
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": these steps were taken
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(advance):
            scheduler.step()
    return scheduler


class TimeBudget:
    """train.max_minutes: times the steps after the first few (the first ones warm caches and kernels) and
    says how many steps fit the budget, once; then says when the budget is spent."""

    CALIBRATION_STEPS = 5
    MARGIN = 0.95  # plan to end a little early: steps vary in length, and an overrun ends before the schedule does

    def __init__(self, minutes: float | None, start_step: int = 0, clock=time.time):
        self.active = bool(minutes)
        self.seconds = (minutes or 0) * 60
        self.clock = clock
        self.started = clock()
        self.calibrate_from = (start_step + 1, None)  # (step, time) where timing starts
        self.seconds_per_step: float | None = None

    def steps_that_fit(self, step: int, slowest) -> int | None:
        """At the end of the calibration steps: the last step that ends within the budget (else None)."""
        first, since = self.calibrate_from
        if since is None:
            if step == first:
                self.calibrate_from = (step, self.clock())
            return None
        if self.seconds_per_step is not None or step < first + self.CALIBRATION_STEPS:
            return None
        self.seconds_per_step = slowest((self.clock() - since) / (step - first))
        left = self.MARGIN * self.seconds - slowest(self.clock() - self.started)
        return max(step + 1, step + int(left / self.seconds_per_step))

    def end_of(self, step: int, last: int) -> float:
        return time.time() + (last - step) * (self.seconds_per_step or 0)

    def spent(self, slowest) -> bool:
        return slowest(self.clock() - self.started) >= self.seconds


def item_softmax_candidates(cfg, setup, data) -> torch.Tensor | None:
    """Sorted item-token ids when the loss is a softmax over items only (atomic ids, train.item_softmax)."""
    if not (setup.item_tokens and cfg.train.item_softmax):
        return None
    import pyarrow.compute as pc

    candidates = torch.tensor(sorted(setup.item_tokens))
    labels = torch.tensor(pc.list_flatten(data.data.column("labels")).to_numpy())
    labels = labels[labels != IGNORE_INDEX]
    if not torch.isin(labels, candidates).all():
        raise ConfigError(f"train.item_softmax=true needs every trained token to be an item token, but "
                          f"{setup.template.source}'s completion renders other text too; set train.item_softmax=false")
    return candidates


def candidate_levels(setup, candidates: torch.Tensor | None) -> torch.Tensor | None:
    """Semantic ids: the code level of each candidate token, so that each position's softmax runs over the
    codes of its own level (a first code competes with first codes only, as in decoding)."""
    if candidates is None or setup.codes is None:
        return None
    level = {setup.tokenizer.convert_tokens_to_ids(name): lvl for name, lvl in setup.codes.vocabulary_levels()}
    return torch.tensor([level[int(t)] for t in candidates])


def loss_terms(cfg, setup, candidates: torch.Tensor | None, preference: SoftmaxDPO | None) -> list[LossTerm]:
    """The run's loss as named terms (genrec.training.loss): S-DPO (train.loss=softmax_dpo) or the cross-entropy, the
    latter with the popularity term in its logits (train.popularity_prior), plus the counterfactual term
    (train.counterfactual_alpha)."""
    if preference is not None:
        return [preference]
    train = cfg.train
    if train.popularity_prior:
        prior = candidate_prior(setup.split.train_popularity(), setup.item_tokens, candidates, train.popularity_prior)
        terms = [PopularityPriorLoss(prior)]
    else:
        terms = [CrossEntropy()]
    if train.counterfactual_alpha:
        terms.append(CounterfactualLoss(train.counterfactual_alpha, NullHistory(setup.encoder, train.objective)))
    return terms


def parameter_groups(model, cfg) -> list[dict]:
    """Adapter weights at train.lr; new item-token rows at train.embedding_lr when set."""
    tokens = [p for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" not in n]
    groups = [{"params": rest}]
    if tokens:
        groups.append({"params": tokens, "lr": cfg.train.embedding_lr or cfg.train.lr})
    return groups


def load_init_adapter(model, folder: Path, setup) -> None:
    """train.init_adapter: start from another run's adapter weights (same adapter settings and item index)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"train.init_adapter={folder}: no adapter_model.safetensors there; point it at a "
                              "finished run's adapter folder (e.g. runs/sft/adapter)")
    if read_info(folder).get("item_index") != setup.index.fingerprint:
        raise CheckpointError(f"train.init_adapter={folder} was trained with other items, identifiers or template "
                              "(its item index differs from this run's); use the same data, items and prompt config")
    saved = json.loads((folder / "adapter_config.json").read_text())
    mine = setup.cfg.adapter
    theirs = {"r": saved.get("r"), "target_modules": sorted(saved.get("target_modules") or [])}
    if theirs != {"r": mine.r, "target_modules": sorted(mine.target_modules)}:
        raise ConfigError(f"train.init_adapter={folder} has adapter r={theirs['r']}, target_modules="
                          f"{theirs['target_modules']}; this run's adapter.r={mine.r}, adapter.target_modules="
                          f"{sorted(mine.target_modules)} must match it")
    result = set_peft_model_state_dict(model, load_file(str(weights)))
    if result.unexpected_keys:
        raise CheckpointError(f"train.init_adapter={folder}: weights this adapter does not have: "
                              f"{result.unexpected_keys[:3]}")


def check_resumable(folder: Path, cfg, setup, train_data: str) -> None:
    """run.resume continues a run only on what it was trained on: the same template, catalog, identifiers,
    tokenizer, training examples and base model (what genrec.json recorded), checked before weights load."""
    saved = read_info(folder)
    changes = [what for key, mine, what in (
        ("template_sha256", setup.template.sha256, f"the prompt template ({cfg.prompt.template})"),
        ("item_index", setup.index.fingerprint, "the catalog, the item identifiers or the tokenizer"),
        ("train_data", train_data, "the training data (interactions, split or window settings, examples)"),
        ("base_model", cfg.model.name_or_path, f"the base model (model.name_or_path={cfg.model.name_or_path})"),
    ) if key in saved and saved[key] != mine]
    if changes:
        raise CheckpointError(f"run.resume=true: {folder} was trained on other inputs; changed since: "
                              f"{'; '.join(changes)}. Undo the change, or start over with run.resume=false and a new "
                              "run.output_dir")


def main(argv: list[str]) -> None:
    cfg = load_config(*parse_cli(argv))
    set_threads()
    accelerator = make_accelerator(resolve_dtype(cfg.model.dtype), cfg.model.tf32)
    setup_logging(accelerator.is_main_process)
    members = member_configs(cfg)
    for k, member in enumerate(members):
        if len(members) > 1:
            log.info("ensemble member %d of %d: seed %d, output %s", k + 1, len(members), member.run.seed,
                     member.run.output_dir)
        if not train(member, accelerator):
            return  # halted: continue with run.resume=true, which resumes this member and trains the rest
        accelerator.free_memory()  # drop the accelerator's references to this member's model and optimizer
    if len(members) > 1:
        if accelerator.is_main_process:
            folder = assemble(cfg.run.output_dir, len(members), cfg.run.seed)
            log.info("ensemble of %d adapters assembled in %s", len(members), folder)
        accelerator.wait_for_everyone()


def train(cfg, accelerator) -> bool:
    """One run (one ensemble member): True once its adapter is final, False when halted before the end."""
    torch.manual_seed(cfg.run.seed)
    out = Path(cfg.run.output_dir)
    resume_from = None
    if cfg.run.resume:
        found = checkpoint_dirs(out)
        if (out / "adapter" / STATE_DIR / "trainer_state.json").is_file():
            found.append(out / "adapter")  # a finished run: resuming it is a no-op
        resume_from = max(found, key=lambda p: json.loads((p / STATE_DIR / "trainer_state.json").read_text())["step"],
                          default=None)
        if resume_from is None:
            log.info("run.resume: no checkpoint in %s/checkpoints yet; starting fresh", out)

    if sharding.kind(accelerator) == "deepspeed":
        if cfg.run.resume:
            raise ConfigError("run.resume=true under DeepSpeed: its engine partitions the optimizer state, which "
                              "genrec's checkpoints do not hold; resume under DDP or FSDP (recipes/accelerate/)")
        if cfg.train.grad_accum > 1:
            raise ConfigError("train.grad_accum > 1 under DeepSpeed: its engine accumulates by its own config; "
                              "set gradient_accumulation_steps in recipes/accelerate/deepspeed_zero2.yaml instead")

    # ---- setup: everything the user wrote is validated before weights load
    setup = prepare(cfg)
    examples = setup.training_examples()
    if not examples:
        raise DataError("no training windows: every user's training part is shorter than data.min_history + 1 "
                        "(or data.train_windows_per_user=0)")
    train_data = training_data_fingerprint(setup.encoder, examples)
    if resume_from is not None:
        check_resumable(resume_from, cfg, setup, train_data)
    with accelerator.main_process_first():
        data = tokenized_dataset(setup.encoder, examples, cfg.data.cache_dir or out / "cache",
                                 tokenize_workers(cfg.data.tokenize_workers, len(examples)))
    lengths = data.data.column("length").to_pylist()  # once: the batch order reads it row by row every epoch
    log.info("%d training windows (%s objective), %d users, %d items; mean length %.0f tokens", len(data),
             cfg.train.objective, len(setup.split.sequences), len(setup.split.catalog), sum(lengths) / len(lengths))
    candidates = item_softmax_candidates(cfg, setup, data)
    levels = candidate_levels(setup, candidates)
    # train.target_weighting (None = plain mean); with atomic ids a label token names its item
    weights = training_weights(cfg, setup.split, setup.item_tokens if setup.codes is None else None)
    task_weight = cfg.train.task_weight

    def row_weights(labels: list[int], target: int, task: str | None) -> list[float]:
        return label_weights(labels, weights.row(labels, target) if weights else None, task, task_weight)

    device = model_device(accelerator)
    model = setup.load_model(for_training=True, device=device)
    model = attach_adapter(model, cfg.adapter, setup.item_tokens)
    if cfg.train.init_adapter:
        load_init_adapter(model, Path(cfg.train.init_adapter), setup)
        log.info("starting from the adapter weights of %s", cfg.train.init_adapter)
    preference = None
    if cfg.train.loss == "softmax_dpo":  # the reference is the starting weights: score it before any update
        preference = SoftmaxDPO(cfg.train.dpo_beta, cfg.train.ce_weight, cfg.train.negatives, cfg.run.seed)
        item_of_token = {tok: item for item, tok in enumerate(setup.item_tokens)}
        preference.prepare(model, data, candidates, item_of_token, list(range(len(data))), setup.tokenizer.pad_token_id,
                           accelerator.autocast, cfg.train.batch_size, accelerator.is_main_process, device)
    if resume_from is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(resume_from / "adapter_model.safetensors")))
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info("trainable parameters: %d (%.2f%%)", sum(p.numel() for p in trainable),
             100 * sum(p.numel() for p in trainable) / sum(p.numel() for p in model.parameters()))
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    terms = loss_terms(cfg, setup, candidates, preference)
    objective = TrainingObjective(model, terms, candidates, levels, mixed=accelerator.mixed_precision != "no")

    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = len(epoch_batches(lengths, cfg.train.batch_size, cfg.run.seed, 0)) // world
    steps_per_epoch = max(1, per_rank // cfg.train.grad_accum)
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    scheduler = build_scheduler(cfg.train.scheduler, optimizer, int(cfg.train.warmup_ratio * total), total)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    if rank:  # every process its own dropout and sampling; process 0 keeps the single-process stream
        torch.manual_seed(cfg.run.seed + 1_000_003 * rank)
    step = 0
    # model selection on validation (train.select_best / train.patience): best NDCG@10 so far, its step, and
    # how many validations since; kept in every checkpoint so that a resumed run selects the same way
    selection = {"best_ndcg": None, "best_step": None, "since_best": 0, "stopped_early": False}
    if resume_from is not None:
        resumed = load_training_state(resume_from, rank, world, sharding.kind(accelerator))
        sharding.load_optimizer_state(accelerator, objective, optimizer, resumed["optimizer"])
        state = resumed["trainer"]
        if cfg.train.max_minutes and state.get("total_steps", total) < total:  # cut to a time budget before
            total = state["total_steps"]
            scheduler = build_scheduler(cfg.train.scheduler, sharding.inner(optimizer),
                                        int(cfg.train.warmup_ratio * total), total)
        scheduler.load_state_dict(resumed["scheduler"])
        step = state["step"]
        selection.update(state.get("selection", {}))
        log.info("resumed from %s at step %d", resume_from, step)
        if (step >= total or selection["stopped_early"]) and resume_from.name == "adapter":
            log.info("training already finished (%d of %d steps); adapter at %s", step, total, resume_from)
            return True

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    metrics = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    if resume_from is not None and accelerator.is_main_process:
        metrics.truncate_after(step)  # rows logged after this checkpoint (a killed run) are replayed, not doubled
    config_text = (out / "config.yaml").read_text() if accelerator.is_main_process else ""
    info = {"genrec_version": __version__, "base_model": cfg.model.name_or_path, "model_path": str(setup.model_path),
            "template_sha256": setup.template.sha256, "item_index": setup.index.fingerprint,
            "identifier": cfg.items.identifier, "train_data": train_data, "processes": world}
    valid_key = "valid_auc" if setup.template.answers else "valid_ndcg@10"
    validation_cases = evaluation_cases(setup.split, cfg.train.eval_users, cfg.run.seed, period_start(cfg), "valid")

    def adapted() -> torch.nn.Module:
        """The peft model inside whatever wrapper the launcher put around the training objective."""
        return accelerator.unwrap_model(objective).model

    def save(folder: Path, with_state: bool = True) -> None:
        accelerator.wait_for_everyone()
        # collective under FSDP (every process takes part): whole adapter weights and optimizer state
        weights = sharding.adapter_weights(accelerator, adapted())
        state = None
        if with_state and sharding.resumable(accelerator):
            state = {"optimizer": sharding.optimizer_state(accelerator, objective, optimizer),
                     "scheduler": scheduler.state_dict(), "rngs": gather_object([rng_state()]),
                     "trainer": {"step": step, "total_steps": total, "selection": selection, "processes": world,
                                 "sharding": sharding.kind(accelerator)}}
        if accelerator.is_main_process:
            write_checkpoint(folder, adapted(), {**info, "step": step}, config_text, setup.template.text, state,
                             setup.checkpoint_files(), weights)
        accelerator.wait_for_everyone()

    def validate() -> float:
        """Validation NDCG@10 (pointwise templates: AUC) on the validation users' held-out items. Users are
        sharded over the processes; under FSDP every process decodes every user instead, in step, since each
        forward pass gathers the layers' shards from all of them."""
        net = adapted()
        net.eval()
        together = sharding.kind(accelerator) == "fsdp"
        with sharding.whole_model(accelerator, objective):
            if setup.template.answers:
                asked = evaluation_examples(setup.split, [c.user_id for c in validation_cases], "valid",
                                            cfg.data.max_history, cfg.data.like_threshold)
                if together:
                    prompts = [setup.encoder.prompt_ids(ex) for ex in asked]
                    scores = preference_scores(net, prompts, *answer_token_ids(setup.encoder),
                                               setup.tokenizer.pad_token_id, cfg.decode.batch_users)
                else:
                    scores = sharded_scores(accelerator, net, setup.encoder, asked, cfg.decode.batch_users)
                net.train()
                return roc_auc(scores, [bool(ex.label) for ex in asked])
            rec = Recommender(net, setup)
            mine = rank_cases(rec, validation_cases, "valid", 10, *((0, 1) if together else (rank, world)))
        net.train()
        gathered = dict(mine) if together else {}
        if not together:
            for part in accelerator.gather_for_metrics([mine], use_gather_object=True):
                gathered.update(part)
        return score_cases(gathered, setup.split, validation_cases, [10], bias=False)["ndcg@10"]

    def select(ndcg: float) -> None:
        """Track the best validation so far; with train.select_best keep its weights in <output_dir>/best."""
        if selection["best_ndcg"] is None or ndcg > selection["best_ndcg"]:
            selection.update(best_ndcg=ndcg, best_step=step, since_best=0)
            if cfg.train.select_best:
                save(out / BEST_DIR, with_state=False)
        else:
            selection["since_best"] += 1

    def slowest(seconds: float) -> float:
        """The largest of every process's figure (they must all take the same decision)."""
        return max(gather_object([seconds]))

    budget = TimeBudget(cfg.train.max_minutes, start_step=step)

    # ---- train
    objective.train()
    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=not accelerator.is_main_process)
    window_loss, window_tokens, window_start, epoch_cache = 0.0, 0, time.time(), {}
    stop_at = min(total, cfg.train.halt_after_steps) if cfg.train.halt_after_steps else total
    while step < stop_at:
        epoch, within = divmod(step, steps_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache = {epoch: epoch_batches(lengths, cfg.train.batch_size, cfg.run.seed, epoch)[: per_rank * world][rank::world]}
        batches = epoch_cache[epoch]
        for micro in range(cfg.train.grad_accum):
            indices = batches[within * cfg.train.grad_accum + micro]
            rows = data[indices]
            rows = [{"input_ids": i, "labels": l, "user_id": u, "row": row,
                     **({"weights": row_weights(l, t, task)} if weights or task_weight != 1.0 else {})}
                    for i, l, t, u, task, row in zip(rows["input_ids"], rows["labels"], rows["target"],
                                                     rows["user_id"], rows["task"], indices)]
            batch = to_device(training_batch(rows, setup.tokenizer.pad_token_id, terms), accelerator.device)
            last = micro == cfg.train.grad_accum - 1
            with accelerator.no_sync(objective) if not last else contextlib.nullcontext():
                loss = objective(batch, accelerator.autocast()) / cfg.train.grad_accum
                accelerator.backward(loss)
            window_loss += loss.item()
            window_tokens += int(batch["attention_mask"].sum())
        if cfg.train.max_grad_norm:
            accelerator.clip_grad_norm_(objective.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if budget.active:
            fit = budget.steps_that_fit(step, slowest)
            if fit is not None and fit < total:  # cut the run to the budget; the schedule follows the new length
                log.info("train.max_minutes=%g: %.1f s/step here, so %d of the %d planned steps fit (%.2f epochs); "
                         "training ends about %s", cfg.train.max_minutes, budget.seconds_per_step, fit, total,
                         fit / steps_per_epoch, time.strftime("%H:%M", time.localtime(budget.end_of(step, fit))))
                metrics.write({"step": step, "budget_steps": fit, "planned_steps": total,
                               "seconds_per_step": round(budget.seconds_per_step, 3)})
                total = fit
                stop_at = min(stop_at, total)
                scheduler = build_scheduler(cfg.train.scheduler, sharding.inner(optimizer),
                                            int(cfg.train.warmup_ratio * total), total, advance=step)
                bar.total = total
                bar.refresh()
            elif fit is not None:
                log.info("train.max_minutes=%g: %.1f s/step here, all %d steps fit; training ends about %s",
                         cfg.train.max_minutes, budget.seconds_per_step, total,
                         time.strftime("%H:%M", time.localtime(budget.end_of(step, total))))
            if step < stop_at and budget.spent(slowest):  # the plan overran: end here, as a finished run
                log.info("train.max_minutes=%g spent at step %d of %d: ending the run here (final validation, "
                         "adapter)", cfg.train.max_minutes, step, total)
                metrics.write({"step": step, "budget_spent": True, "planned_steps": total})
                stop_at = total = step

        if step % cfg.train.log_every == 0 or step == stop_at:
            n = cfg.train.log_every if step % cfg.train.log_every == 0 else (step % cfg.train.log_every)
            loss_mean = accelerator.reduce(torch.tensor(window_loss / n), "mean").item()
            tokens = accelerator.reduce(torch.tensor(window_tokens), "sum").item()
            record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": round(loss_mean, 5),
                      "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(tokens / (time.time() - window_start), 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "processes": world}
            metrics.write(record)
            bar.set_postfix(loss=f"{loss_mean:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            window_loss, window_tokens, window_start = 0.0, 0, time.time()
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
            ndcg = validate()
            metrics.write({"step": step, valid_key: round(ndcg, 5), "valid_users": len(validation_cases)})
            log.info("step %d: %s %.4f on %d cases", step, valid_key, ndcg, len(validation_cases))
            select(ndcg)
            if cfg.train.patience and selection["since_best"] >= cfg.train.patience:
                selection["stopped_early"] = True
                log.info("early stop at step %d: no better validation NDCG@10 in %d validations (best %.4f at "
                         "step %d)", step, cfg.train.patience, selection["best_ndcg"], selection["best_step"])
                break
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < stop_at:
            save(out / "checkpoints" / f"step-{step:06d}")
            if accelerator.is_main_process:
                prune_checkpoints(out, cfg.train.keep_checkpoints)
    bar.close()

    if step < total and not selection["stopped_early"]:  # halted: leave a resumable checkpoint, no final adapter
        save(out / "checkpoints" / f"step-{step:06d}")
        log.info("halted after step %d of %d; continue with run.resume=true", step, total)
        return False
    if not selection["stopped_early"]:
        ndcg = validate()
        metrics.write({"step": step, valid_key: round(ndcg, 5), "valid_users": len(validation_cases)})
        log.info("final %s %.4f on %d cases", valid_key, ndcg, len(validation_cases))
        select(ndcg)
    if cfg.train.select_best and selection["best_step"] != step:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        best = load_file(str(out / BEST_DIR / "adapter_model.safetensors"))
        set_peft_model_state_dict(adapted(), best)
        log.info("keeping the weights of step %d (validation NDCG@10 %.4f) over step %d's",
                 selection["best_step"], selection["best_ndcg"], step)
    metrics.write({"step": step, "selected_step": selection["best_step"], f"selected_{valid_key}":
                   None if selection["best_ndcg"] is None else round(selection["best_ndcg"], 5)})
    save(out / "adapter")
    log.info("adapter saved to %s", out / "adapter")
    return True


if __name__ == "__main__":
    sys.exit(run(main))
