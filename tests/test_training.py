"""Training recipe on the tiny model: completion-only loss, checkpoints, exact resume, adapters, bnb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_recipes import load_recipe
from safetensors.torch import load_file

from genrec.training.batching import collate
from genrec.training.loss import completion_loss


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_completion_loss_matches_per_row_reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
            {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, -100, 14]}]
    batched = completion_loss(model, collate(rows, pad_id=0)).item()
    total, count = 0.0, 0
    for r in rows:
        out = model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]))
        k = sum(t != -100 for t in r["labels"])
        total, count = total + out.loss.item() * k, count + k
    assert batched == pytest.approx(total / count, rel=1e-5)


def test_a_padded_batch_gives_every_attention_query_a_key_and_keeps_the_loss_and_gradients(tiny_model_dir, monkeypatch):
    """Left padding leaves padding queries with no key to attend to; torch's CUDA kernels answered that with NaN
    gradients on an H200 (genrec.model.attention_mask). The training forward must hand sdpa no such row, and its
    loss and gradients must equal those of the plain 2-D mask (the CPU kernel is exact there)."""
    from transformers import AutoModelForCausalLM

    from genrec.model.attention_mask import training_attention_mask

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32, attn_implementation="sdpa")
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
            {"input_ids": [11, 12, 13], "labels": [-100, -100, 13]}]
    batch = collate(rows, pad_id=0)
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)

    def loss_and_grads(plain: bool):
        model.zero_grad()
        if plain:  # what transformers builds from the 2-D mask
            with monkeypatch.context() as m:
                m.setattr("genrec.training.loss.training_attention_mask", lambda model, mask: mask)
                loss = completion_loss(model, batch)
        else:
            loss = completion_loss(model, batch)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain_loss, plain_grads = loss_and_grads(plain=True)
    assert masks and any(not bool(m.any(-1).all()) for m in masks)  # the 2-D mask leaves padding rows empty
    masks.clear()
    fixed_loss, fixed_grads = loss_and_grads(plain=False)
    assert masks and all(m is not None and bool(m.any(-1).all()) for m in masks)
    assert fixed_loss == pytest.approx(plain_loss, rel=1e-6)
    assert len(fixed_grads) == len(plain_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fixed_grads, plain_grads))
    # real rows see exactly the causal real keys; padding rows only themselves
    mask = training_attention_mask(model, batch["attention_mask"])[:, 0]
    assert mask.shape == (2, 6, 6)
    assert mask[1, 3:, 3:].equal(torch.ones(3, 3, dtype=torch.bool).tril()) and not mask[1, 3:, :3].any()
    assert mask[1, :3, :3].equal(torch.eye(3, dtype=torch.bool))
    # nothing to fix: no padding, or eager attention
    full = torch.ones(2, 6, dtype=torch.long)
    assert training_attention_mask(model, full) is full
    model.config._attn_implementation = "eager"
    assert training_attention_mask(model, batch["attention_mask"]) is batch["attention_mask"]


def test_checkpoint_is_a_peft_folder_with_state_config_and_template(tiny_overrides, tmp_path, tiny_model_dir):
    finetune = load_recipe("finetune")
    finetune.main(tiny_overrides + ["train.max_steps=3", "train.save_every=2"])
    adapter = tmp_path / "run" / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "config.yaml", "prompt_template.yaml",
                 "genrec.json", "genrec_state/optimizer.pt", "genrec_state/trainer_state.json"):
        assert (adapter / name).is_file(), name
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "run").rglob("*.tmp"))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, str(adapter))
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    some = next(iter(saved))
    assert any(torch.equal(p.detach(), saved[some]) for n, p in loaded.named_parameters() if "lora_" in n)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tokens_per_s", "peak_rss_mb"} <= set(metrics[0])
    assert any("valid_ndcg@10" in m for m in metrics)


def test_resume_equals_uninterrupted(tiny_overrides, tmp_path):
    finetune = load_recipe("finetune")
    common = [o for o in tiny_overrides if not o.startswith("run.output_dir")] + [
        "train.max_steps=6", "adapter.dropout=0.1", "train.eval_users=2"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    finetune.main(common + [f"run.output_dir={full}"])
    finetune.main(common + [f"run.output_dir={parts}", "train.halt_after_steps=3"])
    assert not (parts / "adapter").exists() and (parts / "checkpoints" / "step-000003").is_dir()
    finetune.main(common + [f"run.output_dir={parts}", "run.resume=true"])
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(parts / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert losses(full) == pytest.approx(losses(parts), abs=1e-6)
    assert len(losses(full)) == 6


@pytest.mark.parametrize("method", ["dora", "loha", "ia3"])
def test_other_adapter_families_train(tiny_overrides, tmp_path, method):
    finetune = load_recipe("finetune")
    extra = ["adapter.target_modules=[q_proj,v_proj,down_proj]", "adapter.feedforward_modules=[down_proj]"]
    finetune.main(tiny_overrides + ["train.max_steps=2", f"adapter.method={method}", "train.lr=1e-2"] + extra)
    cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == {"dora": "LORA", "loha": "LOHA", "ia3": "IA3"}[method]
    assert cfg.get("use_dora", False) == (method == "dora")
    assert len(losses(tmp_path / "run")) == 2


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantized_lora_step_changes_only_the_adapter(tiny_overrides, tmp_path, quant):
    pytest.importorskip("bitsandbytes")
    from genrec.config import load_config
    from genrec.model.loading import attach_adapter, load_base_model

    cfg = load_config(None, tiny_overrides + [f"model.quantization={quant}", "model.dtype=bfloat16"])
    model = attach_adapter(load_base_model(cfg.model, for_training=True), cfg.adapter)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Linear4bit" in kinds) if quant == "4bit" else ("Linear8bitLt" in kinds)
    batch = collate([{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, -100, 8, 9]}] * 2, pad_id=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        completion_loss(model, batch)  # bnb's CPU kernels repack 4-bit weights on first use
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = completion_loss(model, batch)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert changed and all("lora_" in n for n in changed)
    assert all(torch.equal(p.detach(), frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_inference_reuses_the_checkpoint_template_and_detects_catalog_changes(tiny_overrides, tmp_path):
    from genrec.config import load_config
    from genrec.errors import CheckpointError
    from genrec.recommender import Recommender

    finetune = load_recipe("finetune")
    finetune.main(tiny_overrides + ["train.max_steps=1"])
    saved = (tmp_path / "run" / "adapter" / "prompt_template.yaml").read_text()
    edited = tmp_path / "edited.yaml"
    edited.write_text(saved.replace("Which movie will they watch next?", "Next movie?"))
    cfg = load_config(None, tiny_overrides + [f"prompt.template={edited}"])
    with pytest.warns(UserWarning, match="differs from the template this checkpoint was trained with"):
        rec, folder = Recommender.load(cfg)
    assert rec.setup.template.text == saved and folder == tmp_path / "run" / "adapter"
    changed = load_config(None, tiny_overrides + ["data.item_text={movie_title}"])
    with pytest.raises(CheckpointError, match="catalog or item identifiers changed"):
        Recommender.load(changed)


def test_resume_of_a_finished_run_is_a_no_op(tiny_overrides, tmp_path):
    finetune = load_recipe("finetune")
    finetune.main(tiny_overrides + ["train.max_steps=2"])
    adapter = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    finetune.main(tiny_overrides + ["train.max_steps=2", "run.resume=true"])
    assert adapter.stat().st_mtime_ns == stamp
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines


def test_gradient_through_a_4bit_layer_matches_its_dequantized_weights():
    """bitsandbytes' CPU 4-bit kernel warns it has no autograd kernel; LoRA below it still needs the right
    input gradient, so compare with the same matmul on the dequantized weight."""
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 64, bias=False)
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")  # quantizes the weight
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        layer(x.to(torch.bfloat16))  # quantizes/packs on first use
    weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    xq = x.clone().to(torch.bfloat16).requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    layer(xq).float().sum().backward()
    (xr @ weight.t()).sum().backward()
    torch.testing.assert_close(xq.grad.float(), xr.grad, atol=0.03, rtol=0.02)


def test_bf16_training_loss_keeps_fp32_adapter_weights_and_gradients(tiny_model_dir):
    """Adapters compute in bf16 under autocast (no fp32 up-cast of their inputs) yet train fp32 weights,
    and the loss and gradients stay close to peft's default casting."""
    from transformers import AutoModelForCausalLM

    from genrec.config import AdapterConfig
    from genrec.model.loading import attach_adapter
    from genrec.training.loss import training_loss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16)
    model = attach_adapter(base, AdapterConfig(dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)  # non-zero B so every adapter weight gets a gradient
    batch = collate([{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]}] * 2, pad_id=0)
    results = {}
    for mixed in (True, False):
        model.zero_grad()
        seen = []
        hook = [m.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0].dtype))
                for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default")]
        loss = training_loss(model, batch, torch.autocast("cpu", dtype=torch.bfloat16), mixed)
        loss.backward()
        for h in hook:
            h.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert all(g.dtype == torch.float32 for g in grads.values())
        results[mixed] = (loss.item(), grads, set(seen))
    assert results[True][2] == {torch.bfloat16} and results[False][2] == {torch.float32}
    assert results[True][0] == pytest.approx(results[False][0], rel=2e-2)
    for n, g in results[True][1].items():
        ref = results[False][1][n]
        assert torch.allclose(g, ref, atol=0.05 * ref.abs().max().item() + 1e-6), n
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def _validations(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["valid_ndcg@10"]) for r in rows if "valid_ndcg@10" in r]


def test_select_best_keeps_the_weights_of_the_best_validation(tiny_overrides, tmp_path):
    finetune = load_recipe("finetune")
    run = tmp_path / "run"
    finetune.main(tiny_overrides + ["train.max_steps=8", "train.eval_every=2", "train.select_best=true",
                                    "train.lr=3e-2", "train.eval_users=null"])
    checks = _validations(run)
    assert [s for s, _ in checks] == [2, 4, 6, 8]
    best_step, best = max(checks, key=lambda sv: (sv[1], -sv[0]))  # the first of equal bests
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["selected_step"] == best_step and rows[-1]["selected_valid_ndcg@10"] == pytest.approx(best)
    adapter, kept = load_file(str(run / "adapter" / "adapter_model.safetensors")), \
        load_file(str(run / "best" / "adapter_model.safetensors"))
    assert adapter.keys() == kept.keys() and all(torch.equal(adapter[k], kept[k]) for k in adapter)
    # and the kept adapter scores what was logged for its step
    results = load_recipe("evaluate").main(tiny_overrides + ["eval.split=valid", "eval.users=null"])
    assert results["metrics"]["ndcg@10"] == pytest.approx(best, abs=1e-4)


def test_patience_stops_where_the_validation_log_says(tiny_overrides, tmp_path):
    finetune = load_recipe("finetune")
    run = tmp_path / "run"
    finetune.main(tiny_overrides + ["train.max_steps=20", "train.eval_every=1", "train.patience=2",
                                    "train.lr=5e-2", "train.eval_users=null"])
    checks = _validations(run)
    best_at, stop_at = 0, None
    for i, (_, ndcg) in enumerate(checks):  # replay the rule on the logged validations
        if ndcg > checks[best_at][1]:
            best_at = i
        elif i - best_at >= 2:
            stop_at = i
            break
    if stop_at is None:
        assert checks[-1][0] == 20  # never two validations without a gain: ran to the end
    else:
        assert len(checks) == stop_at + 1 and checks[-1][0] < 20
    state = json.loads((run / "adapter" / "genrec_state" / "trainer_state.json").read_text())
    assert state["selection"]["stopped_early"] == (stop_at is not None)
    # resuming a run that stopped early is a no-op
    stamp = (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    finetune.main(tiny_overrides + ["train.max_steps=20", "train.eval_every=1", "train.patience=2",
                                    "train.lr=5e-2", "train.eval_users=null", "run.resume=true"])
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_selection_needs_validations(tiny_overrides):
    from genrec.config import load_config
    from genrec.errors import ConfigError

    with pytest.raises(ConfigError, match="train.eval_every"):
        load_config(None, tiny_overrides + ["train.select_best=true"])
    with pytest.raises(ConfigError, match="train.patience"):
        load_config(None, tiny_overrides + ["train.eval_every=5", "train.patience=0"])


def test_resume_refuses_a_run_whose_inputs_changed(tiny_overrides, tmp_path):
    """run.resume continues only the run it checkpointed: a changed template, catalog or training data is
    refused before weights load (the checkpoint would otherwise be saved with the new template and items)."""
    from conftest import write_toy_dataset

    from genrec.errors import CheckpointError

    finetune = load_recipe("finetune")
    base = tiny_overrides + ["train.max_steps=4", "train.save_every=2"]
    finetune.main(base + ["train.halt_after_steps=2"])
    saved = (tmp_path / "run" / "checkpoints" / "step-000002" / "prompt_template.yaml").read_text()
    edited = tmp_path / "edited.yaml"
    edited.write_text(saved.replace("Which movie will they watch next?", "Next movie?"))
    other_data = write_toy_dataset(tmp_path / "other-data", seed=5)
    for change, message in ((f"prompt.template={edited}", "the prompt template"),
                            ("data.item_text={movie_title}", "the catalog, the item identifiers"),
                            (f"data.path={other_data}", "the training data")):
        with pytest.raises(CheckpointError, match=message):
            finetune.main(base + ["run.resume=true", change])
    assert not (tmp_path / "run" / "adapter").exists()  # nothing was trained on the changed inputs
    finetune.main(base + ["run.resume=true"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one row per step: none repeated by the resume


def test_resume_after_a_kill_logs_each_step_once(tiny_overrides, tmp_path):
    """A run killed after logging steps past its last checkpoint (and mid-line): the resumed run replays
    those steps, and metrics.jsonl ends with one row per step."""
    import shutil

    finetune = load_recipe("finetune")
    base = tiny_overrides + ["train.max_steps=4", "train.save_every=2"]
    finetune.main(base + ["train.halt_after_steps=3"])
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints" / "step-000003")  # as if killed before that checkpoint was written
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "loss": 1.2')  # a line cut off by the kill
    finetune.main(base + ["run.resume=true"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def fake_clock(seconds_per_call: float):
    now = [0.0]

    def clock():
        now[0] += seconds_per_call
        return now[0]

    return clock


def test_a_time_budget_cuts_the_run_and_its_schedule_to_fit(tiny_overrides, tmp_path, monkeypatch):
    """train.max_minutes: after 5 timed steps the run plans only the steps that fit; the cosine schedule is
    re-planned over them (it still ends at lr 0) and the run ends with a final adapter."""
    finetune = load_recipe("finetune")
    monkeypatch.setattr(finetune.TimeBudget.__init__, "__defaults__", (0, fake_clock(1.0)))
    finetune.main(tiny_overrides + ["train.max_steps=200", "train.max_minutes=1", "train.warmup_ratio=0"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    plan = next(r for r in rows if "budget_steps" in r)
    assert plan["planned_steps"] == 200 and 20 < plan["budget_steps"] < 200 and plan["step"] == 6
    steps = [r for r in rows if "loss" in r]
    assert steps[-1]["step"] == plan["budget_steps"] and steps[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert json.loads((tmp_path / "run" / "adapter" / "genrec.json").read_text())["step"] == plan["budget_steps"]


def test_a_spent_time_budget_ends_the_run_with_its_adapter(tiny_overrides, tmp_path, monkeypatch):
    """A plan that overruns (here every clock read is 30 s, so the budget is spent at the first step): the run
    ends there as a finished one, with a final validation and an adapter, not a halt the user must resume."""
    finetune = load_recipe("finetune")
    monkeypatch.setattr(finetune.TimeBudget.__init__, "__defaults__", (0, fake_clock(30.0)))
    finetune.main(tiny_overrides + ["train.max_steps=6", "train.max_minutes=1"])
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    spent = next(r for r in rows if r.get("budget_spent"))
    assert spent["planned_steps"] == 6 and spent["step"] < 6
    assert json.loads((run / "adapter" / "genrec.json").read_text())["step"] == spent["step"]
