"""Trie-constrained top-K: beam search where every result is a distinct catalog item.

Several users are decoded in one batch; each prompt is encoded once, then beams
fan out from its KV cache. All beams of all users live in one flat set of rows,
expanded through the trie's CSR tensors (no per-beam Python walk). A candidate
that reaches a leaf is a finished item; unfinished candidates compete for the
``num_beams`` slots of their user. Because every sequence ends with the end
token (or is one atomic item token), finished items are distinct by construction, and items a user must not
see are removed from the trie per user (``remaining_counts``), so a beam never
enters a branch with nothing left to finish.

Scores are sums of the model's full-vocabulary log-probabilities (the same score
as ``generate`` with ``prefix_allowed_tokens_fn``), divided by
``length ** length_penalty``. The output layer runs in fp32 even when the model
body runs in bf16: a bf16 logit of magnitude 20 is rounded to a 0.125 grid, and
summed over a dozen title tokens that noise reorders close items (measured on
ml-100k, tuned demo model, 16 users, 10 beams: top-10 overlap with an fp32 search
0.89 with a bf16 head, 0.99 with an fp32 head, at the same speed). With ``length_penalty == 0`` extending a beam can
only lower its score, so beams below the user's K-th finished score are
dropped (exact early stopping).
"""

from __future__ import annotations

import torch

from genrec.decoding.packed import PackedTree, supports_packing
from genrec.decoding.shared_prefix import PrefixState, shared_prefix_attention, supports
from genrec.items.index import ItemIndex
from genrec.model.output_head import OutputHead
from genrec.training.batching import prompt_inputs

NEG_INF = float("-inf")



class NextTokenLogProbs:
    """Runs the model and returns fp32 next-token log-probabilities at positions ``keep`` (default: the last).

    Where the architecture allows it the body is run on its own and its last hidden state goes
    through an fp32 copy of the output layer (``genrec.model.output_head.OutputHead``, whose fp32 copy is made
    once per instance: keep one per model for a whole evaluation); otherwise the model's own logits are used.
    """

    def __init__(self, model):
        self.model = model
        self.head = OutputHead(model)

    def __call__(self, keep: int | slice = -1, cache=None, **inputs):
        """(log-probs [rows, vocab] or [rows, positions, vocab], the KV cache or None)."""
        if cache is not None:
            inputs[CACHE_ARGUMENT] = cache
        states, out = self.head.states(inputs, keep)
        return torch.log_softmax(self.head.fp32_logits(states), dim=-1), _cache_of(out)


def _cache_argument() -> str:
    """transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name warns, then goes)."""
    import inspect

    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


CACHE_ARGUMENT = _cache_argument()


def _cache_of(output):
    return getattr(output, "cache", None) if CACHE_ARGUMENT == "cache" else output.past_key_values


def _segment_logsumexp(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """[n]: logsumexp of ``values`` within each segment id (0..n-1)."""
    peak = torch.full((n,), NEG_INF, device=values.device, dtype=values.dtype)
    peak = peak.scatter_reduce(0, segment, values, "amax")
    total = torch.zeros(n, device=values.device, dtype=values.dtype).index_add_(0, segment, (values - peak[segment]).exp())
    return peak + total.log()


def topn_per_group(group: torch.Tensor, score: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``n`` best scores within each group, and their rank (0 = best) in the group."""
    if group.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=group.device)
        return empty, empty
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    _, counts = torch.unique_consecutive(group[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=group.device) - torch.repeat_interleave(starts, counts)
    keep = rank < n
    return order[keep], rank[keep]


def _expand(index_ptr: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, edge) pairs for every outgoing edge of every row's node (CSR gather)."""
    starts = index_ptr[nodes]
    counts = index_ptr[nodes + 1] - starts
    rows = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    edges = torch.repeat_interleave(starts, counts) + torch.arange(rows.numel(), device=nodes.device) - first
    return rows, edges


def _prior_never_rises(ptr: torch.Tensor, edge_child: torch.Tensor, prior: torch.Tensor) -> bool:
    parent = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr[1:] - ptr[:-1])
    return bool((prior[edge_child] <= prior[parent] + 1e-6).all())


@torch.no_grad()
def constrained_topk(
    model,
    prompts: list[list[int]],
    index: ItemIndex,
    k: int,
    num_beams: int,
    excluded: list[set[int]] | None = None,
    length_penalty: float = 0.0,
    pad_id: int = 0,
    shared_prefix: bool | None = None,
    node_prior: torch.Tensor | None = None,
    trie_normalize: bool = False,
    next_logp: NextTokenLogProbs | None = None,
) -> list[list[tuple[int, float]]]:
    """Top-``k`` catalog items per prompt, best first, as (catalog index, score).

    ``num_beams`` is raised to ``k`` when smaller: with at least k live beams every
    user gets min(k, items it may still receive) results. ``shared_prefix`` (default:
    where the architecture supports it) keeps one copy of each prompt's K/V for all its
    beams instead of a standard per-beam cache; both give the same ranking.
    ``node_prior`` ([nodes], e.g. gamma * ``ItemIndex.log_mass``): each step from node to child adds
    ``node_prior[child] - node_prior[node]``, so an item's score gains ``prior[leaf] - prior[root]``
    (an intervention applied inside the search, where it can change which beams survive).
    ``trie_normalize``: each step's log-probability is renormalised over the node's children (the
    catalog's continuations), so an item scores log p(item | the output is a catalog item); with
    several codes per item (semantic ids) the mass a node leaks to tokens that continue no item would
    otherwise weigh on every path through it.
    ``next_logp``: the model's ``NextTokenLogProbs``, when the caller keeps one for many batches.
    """
    num_beams = max(num_beams, k)
    device = next(model.parameters()).device
    users = len(prompts)
    excluded = excluded or [set() for _ in prompts]
    trie = index.on(device)
    ptr, edge_token, edge_child, leaf_item = trie.child_ptr, trie.edge_token, trie.edge_child, trie.leaf_item
    remaining = index.remaining_counts(excluded, device)
    prior = None if node_prior is None else node_prior.to(device=device, dtype=torch.float32)
    # exact early stopping needs scores that never rise along a path: a prior that only falls keeps that
    monotone = prior is None or _prior_never_rises(ptr, edge_child, prior)

    inputs = prompt_inputs(prompts, pad_id, device)
    ids, mask, positions = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
    next_logp = next_logp or NextTokenLogProbs(model)
    logp, cache = next_logp(**inputs, use_cache=True)
    if shared_prefix is None:
        shared_prefix = supports(model, ids.shape[1] + index.max_depth)
    state = PrefixState(cache, mask, num_beams) if shared_prefix else None
    if state is not None:
        del cache

    row_user = torch.arange(users, device=device)
    row_node = torch.zeros(users, dtype=torch.long, device=device)
    row_score = torch.zeros(users, device=device)
    row_len = torch.zeros(users, dtype=torch.long, device=device)
    row_pos = positions[:, -1]
    fin_score = torch.full((users, k), NEG_INF, device=device)
    fin_item = torch.full((users, k), -1, dtype=torch.long, device=device)

    for _ in range(index.max_depth):
        rows, edges = _expand(ptr, row_node)
        step = logp[rows, edge_token[edges]]
        if trie_normalize:
            step = step - _segment_logsumexp(step, rows, row_node.numel())[rows]
        child = edge_child[edges]
        user = row_user[rows]
        ok = remaining[user, child] > 0  # the branch still holds an item this user may get
        rows, edges, child, user, step = rows[ok], edges[ok], child[ok], user[ok], step[ok]
        tokens = edge_token[edges]
        score = row_score[rows] + step
        if prior is not None:
            score = score + prior[child] - prior[row_node[rows]]
        length = row_len[rows] + 1
        done = leaf_item[child] >= 0

        if done.any():
            final = score[done] / length[done].float() ** length_penalty if length_penalty else score[done]
            f_user = torch.cat([torch.arange(users, device=device).repeat_interleave(k), user[done]])
            f_score = torch.cat([fin_score.flatten(), final])
            f_item = torch.cat([fin_item.flatten(), leaf_item[child[done]]])
            valid = f_item >= 0
            pick, rank = topn_per_group(f_user[valid], f_score[valid], k)
            fin_score.fill_(NEG_INF)
            fin_item.fill_(-1)
            fin_score[f_user[valid][pick], rank] = f_score[valid][pick]
            fin_item[f_user[valid][pick], rank] = f_item[valid][pick]

        go = ~done
        if length_penalty == 0 and monotone:
            go &= score > fin_score[user, -1]  # cannot reach this user's top-k any more
        rows, tokens, child, user, score, length = rows[go], tokens[go], child[go], user[go], score[go], length[go]
        keep, slot = topn_per_group(user, score, num_beams)
        if keep.numel() == 0:
            break
        order = keep.argsort()  # rows stay grouped by user, in a stable order
        keep, slot = keep[order], slot[order]
        parent = rows[keep]
        row_pos = row_pos[parent] + 1
        row_user, row_node, row_score, row_len = user[keep], child[keep], score[keep], length[keep]
        if state is not None:
            state.select(parent, row_user, slot)
            with shared_prefix_attention(model):
                logp, _ = next_logp(input_ids=tokens[keep].unsqueeze(1), position_ids=row_pos.unsqueeze(1),
                                    use_cache=False, genrec_prefix_state=state)
        else:
            cache.reorder_cache(parent)
            mask = torch.cat([mask[parent], torch.ones((parent.numel(), 1), dtype=mask.dtype, device=device)], dim=1)
            logp, cache = next_logp(input_ids=tokens[keep].unsqueeze(1), attention_mask=mask,
                                    position_ids=row_pos.unsqueeze(1), cache=cache, use_cache=True)

    results = []
    for u in range(users):
        items, scores = fin_item[u].tolist(), fin_score[u].tolist()
        results.append([(i, s) for i, s in zip(items, scores) if i >= 0])
    return results


@torch.no_grad()
def greedy_lines(model, prompts: list[list[int]], stop_tokens: torch.Tensor, max_new_tokens: int,
                 pad_id: int = 0) -> list[list[int]]:
    """Free greedy continuation of each prompt up to and including its first stop token (a newline), at most
    ``max_new_tokens``; a line that hits the limit is returned as is (the caller ends it)."""
    device = next(model.parameters()).device
    inputs = prompt_inputs(prompts, pad_id, device)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]  # generate counts the positions itself
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         num_beams=1, eos_token_id=stop_tokens.tolist(), pad_token_id=pad_id)
    stops = set(stop_tokens.tolist())
    lines = []
    for row in out[:, ids.shape[1]:].tolist():
        line = []
        for tok in row:
            line.append(tok)
            if tok in stops:
                break
        lines.append(line)
    return lines


@torch.no_grad()
def item_token_logprobs(model, prompt: list[int], index: ItemIndex, items: list[int], batch_size: int = 64,
                        next_logp: NextTokenLogProbs | None = None):
    """Teacher forcing: yields (item, log-probability of each of its tokens given the prompt and the tokens before).
    ``next_logp``: the caller's, to reuse its fp32 output layer across many calls (a copy of the whole layer)."""
    device = next(model.parameters()).device
    prefix = torch.tensor(prompt, dtype=torch.long, device=device).unsqueeze(0)
    next_logp = next_logp or NextTokenLogProbs(model)
    for lo in range(0, len(items), batch_size):
        chunk = items[lo: lo + batch_size]
        seqs = [index.sequences[i] for i in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
        full = torch.cat([prefix.expand(len(chunk), -1), ids], dim=1)
        logp, _ = next_logp(keep=slice(prefix.shape[1] - 1, -1), input_ids=full, use_cache=False)
        logp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1).cpu()
        for r, (item, s) in enumerate(zip(chunk, seqs)):
            yield item, logp[r, : len(s)]


@torch.no_grad()
def score_continuations(model, prompt: list[int], sequences: list[list[int]], length_penalty: float = 0.0,
                        skip: list[int] | None = None, next_logp: NextTokenLogProbs | None = None) -> torch.Tensor:
    """log p(sequence | prompt) / len ** length_penalty for each sequence after one shared prompt (e.g. the
    candidate lines of a grounded explanation). The prompt runs once and its keys/values are repeated for
    every sequence, so n candidates cost one prompt plus n short continuations, not n whole prompts.
    ``skip[i]``: the first tokens of sequence i are context, not scored (e.g. the explained item before
    its line), and ``len`` counts the scored tokens only."""
    if len(prompt) < 2:
        raise ValueError("score_continuations needs a prompt of at least 2 tokens")
    device = next(model.parameters()).device
    next_logp = next_logp or NextTokenLogProbs(model)
    head = torch.tensor([prompt[:-1]], dtype=torch.long, device=device)
    _, cache = next_logp(input_ids=head, use_cache=True)
    cache.batch_repeat_interleave(len(sequences))
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width + 1), prompt[-1], dtype=torch.long, device=device)
    for r, seq in enumerate(sequences):  # right padding: later positions never change earlier log-probs
        ids[r, 1: len(seq) + 1] = torch.tensor(seq)
    logp, _ = next_logp(keep=slice(0, -1), input_ids=ids, cache=cache, use_cache=True)
    logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).cpu()
    scores = torch.empty(len(sequences))
    for r, seq in enumerate(sequences):
        first = skip[r] if skip else 0
        total = logp[r, first: len(seq)].sum().item()
        scores[r] = total / (len(seq) - first) ** length_penalty if length_penalty else total
    return scores


@torch.no_grad()
def score_branches(model, prompt: list[int], branches: list[tuple[list[int], list[list[int]]]],
                   length_penalty: float = 0.0, next_logp: NextTokenLogProbs | None = None,
                   chunk: int = 256) -> list[list[float]]:
    """For each branch ``(head, lines)``: log p(line | prompt + head) / len(line) ** length_penalty of each line
    (e.g. the candidate explanation lines of each recommended item, the item's title as its head).

    Everything runs in ONE forward pass (genrec.decoding.packed): the prompt, each head after it, each line after
    its head. The prompt and each head are read once for all their continuations, with no copy of their
    keys and values (what ``score_continuations`` repeats per line). Only the line tokens'
    log-probabilities are computed, in chunks of ``chunk`` positions through the fp32 output layer."""
    if not supports_packing(model):
        return [score_continuations(model, prompt, [head + line for line in lines], length_penalty,
                                    skip=[len(head)] * len(lines), next_logp=next_logp).tolist()
                if lines else [] for head, lines in branches]
    device = next(model.parameters()).device
    next_logp = next_logp or NextTokenLogProbs(model)
    tree = PackedTree()
    root = tree.add(prompt)
    reads = []  # per line token: (packed index of the position predicting it, branch, line)
    for b, (head, lines) in enumerate(branches):
        after = tree.add(head, root) if head else root
        for line_no, line in enumerate(lines):
            segment = tree.add(line, after)
            reads += [(after.index(-1) if t == 0 else segment.index(t - 1), b, line_no) for t in range(len(line))]
    where = torch.tensor([r[0] for r in reads], dtype=torch.long, device=device)
    targets = torch.tensor([tok for _, lines in branches for line in lines for tok in line], dtype=torch.long,
                           device=device)
    inputs = tree.inputs(model, device)
    states = next_logp.head.states(inputs, where)[0][0]  # chunked: [reads, vocab] fp32 at once can be large
    logp = torch.cat([torch.log_softmax(next_logp.head.fp32_logits(states[i: i + chunk]), -1)
                      .gather(-1, targets[i: i + chunk, None]).squeeze(-1) for i in range(0, len(reads), chunk)])
    totals = [[0.0] * len(lines) for _, lines in branches]
    for value, (_, b, line_no) in zip(logp.tolist(), reads):
        totals[b][line_no] += value
    return [[t / len(line) ** length_penalty if length_penalty else t for t, line in zip(row, lines)]
            for row, (_, lines) in zip(totals, branches)]


@torch.no_grad()
def next_token_log_probs_sharing_prefixes(next_logp: NextTokenLogProbs, prompts: list[list[int]]) -> torch.Tensor:
    """[prompts, vocab]: fp32 next-token log-probabilities after each prompt, where the prompts share long
    prefixes with the first one (e.g. one history and copies with a few items removed): each runs from where
    it leaves the first, in one packed forward (genrec.decoding.packed)."""
    model = next_logp.model
    device = next(model.parameters()).device
    tree = PackedTree()
    trunk = tree.add(prompts[0])
    last = [trunk.index(-1)]
    for prompt in prompts[1:]:
        shared = next((i for i, (a, b) in enumerate(zip(prompts[0], prompt)) if a != b), min(len(prompt), len(prompts[0])))
        shared = min(shared, len(prompt) - 1)  # at least one token of its own, to read its last position from
        last.append(tree.add(prompt[shared:], trunk, shared).index(-1))
    inputs = tree.inputs(model, device)
    where = torch.tensor(last, dtype=torch.long, device=device)
    return torch.log_softmax(next_logp.head.fp32_logits(next_logp.head.states(inputs, where)[0][0]), -1)


def score_items(model, prompt: list[int], index: ItemIndex, items: list[int] | None = None,
                length_penalty: float = 0.0, batch_size: int = 64,
                next_logp: NextTokenLogProbs | None = None) -> torch.Tensor:
    """Exact score of each item given one prompt (teacher forcing): the exhaustive reference."""
    items = list(range(index.num_items)) if items is None else items
    scores = torch.empty(len(items))
    for row, (_, logp) in enumerate(item_token_logprobs(model, prompt, index, items, batch_size, next_logp)):
        total = logp.sum().item()
        scores[row] = total / len(logp) ** length_penalty if length_penalty else total
    return scores


def exclude_items_(scores: torch.Tensor, excluded) -> torch.Tensor:
    """Set each row's ``excluded`` items (one set of columns per row) to -inf in the dense [rows, items]
    ``scores``, in place, and return it."""
    for row, items in enumerate(excluded):
        if items:
            scores[row, sorted(items)] = NEG_INF
    return scores


def top_k_unseen(scores, excluded, k: int) -> list[list[tuple[int, float]]]:
    """Top-``k`` (column, score) per row of a dense [rows, items] score tensor, best first, leaving out each
    row's ``excluded`` items (they are set to -inf in ``scores``); a row keeps fewer when fewer remain."""
    exclude_items_(scores, excluded)
    values, indices = scores.topk(min(k, scores.shape[1]), dim=1)
    return [[(i, v) for i, v in zip(idxs, vals) if v != float("-inf")]
            for vals, idxs in zip(values.tolist(), indices.tolist())]
