"""FSDP2 on the CPU (gloo), under torchrun: the pieces genrec's FSDP path is made of, against the same model
unsharded in each process (tests/test_multiprocess.py starts this with 2 processes).

accelerate enables FSDP only on GPUs, so the sharding is applied here directly with ``fully_shard``, as
accelerate's FSDP2 preparation does (each decoder layer, then the root), to genrec's TrainingObjective over
a LoRA + item-token adapter. Checked: the sharded loss and one optimizer step equal the unsharded ones,
``genrec.training.sharding`` gathers the adapter and round-trips the optimizer state, and validation-style decoding
of every user (``whole_model``, every process in step) ranks as the unsharded model does. Process 0 writes
<out>/fsdp.json.

    torchrun --standalone --nproc_per_node 2 tests/fsdp_driver.py --out DIR --model TINY --data TOY
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_fixtures import driver_arguments  # noqa: E402


def main() -> None:
    args = driver_arguments()

    import torch
    import torch.distributed as dist
    from accelerate.utils import DistributedType
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from genrec.config import AdapterConfig, load_config
    from genrec.evaluation.protocol import rank_users
    from genrec.model.loading import attach_adapter
    from genrec.recommender import Recommender, prepare
    from genrec.training import sharding
    from genrec.training.batching import collate
    from genrec.training.loss import TrainingObjective

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_main_process=rank == 0)
    cfg = load_config(None, [f"data.path={args.data}", "data.dataset=toy", "data.max_history=5",
                             f"model.name_or_path={args.model}", "model.dtype=float32", "items.identifier=atomic",
                             "prompt.template=prompts/next_item_atomic.yaml", "decode.batch_users=4",
                             "decode.num_beams=10", "eval.ks=[10]"])
    setup = prepare(cfg)
    torch.manual_seed(0)
    model = attach_adapter(setup.load_model(for_training=True), AdapterConfig(dropout=0.0), setup.item_tokens)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # every adapter weight gets a gradient
    candidates = torch.tensor(sorted(setup.item_tokens))
    reference = TrainingObjective(copy.deepcopy(model), candidates=candidates)
    sharded = TrainingObjective(model, candidates=candidates)
    for layer in sharded.model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)

    tokens = [setup.item_tokens[i] for i in range(12)]
    batch = collate([{"input_ids": [5, 6, *tokens[r: r + 6]], "labels": [-100, -100, -100, *tokens[r + 1: r + 6]]}
                     for r in range(0, 6, 2)], pad_id=setup.tokenizer.pad_token_id)
    results = {"world_size": world}

    def adam(objective):
        return torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-2)

    opt_ref, opt_sharded = adam(reference), adam(sharded)
    start = {n: p.detach().clone() for n, p in reference.model.named_parameters() if p.requires_grad}
    loss_ref, loss_sharded = reference(batch), sharded(batch)
    results["loss"] = [loss_ref.item(), loss_sharded.item()]
    loss_ref.backward()
    loss_sharded.backward()
    opt_ref.step()
    opt_sharded.step()

    gathered = sharding.adapter_weights(accelerator, sharded.model)  # collective
    mine = {n: p.detach() for n, p in reference.model.named_parameters() if p.requires_grad}
    if rank == 0:
        results["adapter_keys_equal"] = sorted(gathered) == sorted(mine)
        results["adapter_max_diff"] = max((gathered[n] - mine[n]).abs().max().item() for n in mine)
        results["adapter_moved"] = min((mine[n] - start[n]).abs().max().item() for n in mine)

    state = sharding.optimizer_state(accelerator, sharded, opt_sharded)  # collective; whole on process 0
    fresh = adam(sharded)
    sharding.load_optimizer_state(accelerator, sharded, fresh, state)  # process 0's copy to every shard
    opt_ref.zero_grad(set_to_none=True)  # (the sharded side's were cleared by the state loading)
    loss_ref2, loss_sharded2 = reference(batch), sharded(batch)
    loss_ref2.backward()
    loss_sharded2.backward()
    opt_ref.step()
    fresh.step()
    second = sharding.adapter_weights(accelerator, sharded.model)
    if rank == 0:
        mine = {n: p.detach() for n, p in reference.model.named_parameters() if p.requires_grad}
        results["after_reload_max_diff"] = max((second[n] - mine[n]).abs().max().item() for n in mine)

    sharded.eval()
    reference.eval()
    users = setup.split.eval_users
    with torch.no_grad(), sharding.whole_model(accelerator, sharded):
        decoded = rank_users(Recommender(sharded.model, setup), users, "valid", 10, 0, 1)
    with torch.no_grad():
        expected = rank_users(Recommender(reference.model, setup), users, "valid", 10, 0, 1)
    results["rankings_equal"] = all([i for i, _ in decoded[u]] == [i for i, _ in expected[u]] for u in users)
    results["users"] = len(users)
    dist.barrier()
    if rank == 0:
        Path(args.out, "fsdp.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
