"""Run every recipe variant under the processes this script was launched with (tests/test_multiprocess.py
starts it with `torchrun --nproc_per_node 2`), in one launch so that two processes start once, not once
per variant.

For each variant: finetune, then evaluate, both through the recipes' own ``main`` (the code a user's
``accelerate launch``/``torchrun`` runs), each in its own output folder under --out. Process 0 writes
<out>/summary.json: per variant the world size the processes saw, the error if one failed, and the
output folder; the tests read the files themselves.

    torchrun --standalone --nproc_per_node 2 tests/multiprocess_driver.py --out DIR --model TINY --data TOY
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_fixtures import driver_arguments  # noqa: E402

CONFIGS = "recipes/configs/ml100k"
ATOMIC = f"{CONFIGS}/smollm2_atomic.yaml"

# name -> (config file, overrides). Every identifier, both objectives, and every training variant.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "title_target": (f"{CONFIGS}/smollm2_lora.yaml", []),
    "title_sequence": (f"{CONFIGS}/smollm2_lora.yaml", ["train.objective=sequence",
                                                         "prompt.template=prompts/next_item_title_sequence.yaml"]),
    "id_target": (f"{CONFIGS}/smollm2_lora.yaml", ["items.identifier=id", "prompt.template=prompts/next_item_id.yaml"]),
    "atomic_sequence": (ATOMIC, []),
    "atomic_target_full_vocabulary": (ATOMIC, ["train.objective=target", "train.item_softmax=false"]),
    "semantic": (f"{CONFIGS}/smollm2_semantic.yaml", ["items.semantic_source=collaborative",
                                                      "items.semantic_codebook=4", "items.semantic_levels=2"]),
    "ensemble": (f"{CONFIGS}/smollm2_atomic_ensemble.yaml", ["train.ensemble=2"]),
    "sdpo": (f"{CONFIGS}/smollm2_atomic_sdpo.yaml", ["train.negatives=4"]),  # init_adapter: atomic_sequence's
    "counterfactual": (f"{CONFIGS}/smollm2_atomic_counterfactual.yaml", []),
    "popularity_prior": (f"{CONFIGS}/smollm2_atomic_pd.yaml", []),
    "deconfounded": (f"{CONFIGS}/smollm2_atomic_deconfounded.yaml", []),
    "multitask": (f"{CONFIGS}/smollm2_atomic_multitask.yaml", ["train.mix_masked_item=0.2", "train.mask_window=4"]),
    "pointwise": (f"{CONFIGS}/smollm2_pointwise.yaml", []),
    "explanation": (f"{CONFIGS}/smollm2_explain.yaml", []),
    "reason": (f"{CONFIGS}/smollm2_reason.yaml", ["reason.max_new_tokens=8"]),
}
NEEDS = {"sdpo": "atomic_sequence"}  # variant -> the variant whose adapter it starts from

# the same recipe, for checks against one process: no dropout, so that a run is a function of its batches
EXACT = (f"{CONFIGS}/smollm2_lora.yaml", ["adapter.dropout=0.0", "train.max_steps=4", "train.warmup_ratio=0"])


def tiny(model: str, data: str, out: Path) -> list[str]:
    return [f"run.output_dir={out}", f"data.path={data}", "data.dataset=toy", "data.max_history=5",
            f"model.name_or_path={model}", "model.dtype=float32", "train.batch_size=4", "train.max_steps=3",
            "train.log_every=1", "train.save_every=0", "train.eval_users=4", "train.eval_every=0",
            "decode.batch_users=3", "decode.num_beams=20"]


def main() -> None:
    args = driver_arguments()

    import torch.distributed as dist
    from accelerate import PartialState

    from helpers_recipes import load_recipe

    state = PartialState(cpu=True)  # joins the launcher's process group before anything else runs

    finetune, evaluate = load_recipe("finetune"), load_recipe("evaluate")
    out = Path(args.out)
    summary: dict[str, dict] = {}

    def run(name: str, config: str, overrides: list[str], evaluate_too: bool = True) -> None:
        folder = out / name
        base = ["--config", config, *tiny(args.model, args.data, folder), *overrides]
        record = {"dir": str(folder), "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                  "processes": state.num_processes}
        try:
            finetune.main(base)
            if evaluate_too:
                evaluate.main([*base, f"run.checkpoint={folder / 'adapter'}", f"run.output_dir={folder / 'eval'}"])
        except Exception:  # noqa: BLE001 - recorded for the test to report, then the next variant runs
            record["error"] = traceback.format_exc()[-3000:]
        summary[name] = record

    for name, (config, overrides) in VARIANTS.items():
        extra = [f"train.init_adapter={out / NEEDS[name] / 'adapter'}"] if name in NEEDS else []
        run(name, config, [*overrides, *extra])

    # checks against one process and against an uninterrupted run
    config, overrides = EXACT
    run("exact", config, overrides)
    run("resumed", config, [*overrides, "train.save_every=2", "train.halt_after_steps=2"], evaluate_too=False)
    run("resumed", config, [*overrides, "train.save_every=2", "run.resume=true"], evaluate_too=False)
    resumed_evaluation(evaluate, state, out, summary)
    state.wait_for_everyone()
    if state.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))


def resumed_evaluation(evaluate, state, out: Path, summary: dict) -> None:
    """The "exact" adapter evaluated by both processes, each killed at its second batch (its first is on
    disk by then), then started again: "resumed_eval" records how many cases the partial files held."""
    import torch.distributed as dist

    from genrec.recommender import Recommender
    from helpers_recipes import KilledForTest, killed_at_call

    args = driver_arguments()
    config, overrides = EXACT
    folder = out / "resumed_eval"
    argv = ["--config", config, *tiny(args.model, args.data, out / "exact"), *overrides,
            f"run.checkpoint={out / 'exact' / 'adapter'}", f"run.output_dir={folder}"]
    record = {"dir": str(folder), "world_size": dist.get_world_size() if dist.is_initialized() else 1,
              "processes": state.num_processes}
    try:
        with contextlib.suppress(KilledForTest), killed_at_call(Recommender, "rank", 2):
            evaluate.main(argv)
        state.wait_for_everyone()
        record["partial_lines"] = sum(len(p.read_text().splitlines()) - 1
                                      for p in folder.glob("rankings.partial-*.jsonl"))
        record["partial_files"] = len(list(folder.glob("rankings.partial-*.jsonl")))
        state.wait_for_everyone()  # counted before the second run appends
        evaluate.main(argv)
    except Exception:  # noqa: BLE001 - recorded for the test to report
        record["error"] = traceback.format_exc()[-3000:]
    summary["resumed_eval"] = record


if __name__ == "__main__":
    main()
