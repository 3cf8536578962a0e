"""Constrained top-K against an exhaustive reference on the tiny model."""

from __future__ import annotations

import pytest
import torch

from genrec.config import load_config
from genrec.decoding.search import constrained_topk, score_items, topn_per_group
from genrec.model.loading import load_base_model
from genrec.recommender import prepare


@pytest.fixture(scope="module")
def tiny(tiny_title_setup):
    setup, model = tiny_title_setup
    users = setup.split.eval_users[:6]
    examples = [setup.split.example(u, "test", 5) for u in users]
    prompts = [setup.encoder.prompt_ids(ex) for ex in examples]
    seen = [setup.split.seen(u, "test") for u in users]
    return setup, model, prompts, seen


def test_topn_per_group_ranks_within_each_group():
    group = torch.tensor([0, 1, 0, 1, 0, 2])
    score = torch.tensor([0.1, 0.5, 0.9, 0.7, 0.3, 0.0])
    idx, rank = topn_per_group(group, score, 2)
    picked = {(int(group[i]), int(r)): int(i) for i, r in zip(idx, rank)}
    assert picked == {(0, 0): 2, (0, 1): 4, (1, 0): 3, (1, 1): 1, (2, 0): 5}


def test_wide_beam_equals_exhaustive_ranking(tiny):
    """With as many beams as items nothing is pruned: beam search must return the exact top-k."""
    setup, model, prompts, seen = tiny
    n = setup.index.num_items
    for prompt, excluded in zip(prompts, seen):
        got = constrained_topk(model, [prompt], setup.index, k=10, num_beams=n, excluded=[excluded],
                               pad_id=setup.tokenizer.pad_token_id)[0]
        ref = score_items(model, prompt, setup.index)
        ref[list(excluded)] = float("-inf")
        top = torch.topk(ref, 10)
        assert [i for i, _ in got] == top.indices.tolist()
        assert [s for _, s in got] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_narrow_beam_returns_valid_distinct_unseen_items_and_scores_are_exact(tiny):
    setup, model, prompts, seen = tiny
    results = constrained_topk(model, prompts, setup.index, k=8, num_beams=3, excluded=seen,
                               pad_id=setup.tokenizer.pad_token_id)
    for prompt, excluded, ranked in zip(prompts, seen, results):
        items = [i for i, _ in ranked]
        assert len(items) == 8 and len(set(items)) == 8
        assert not set(items) & excluded
        assert all(0 <= i < setup.index.num_items for i in items)
        # each reported score is that item's exact sequence log-probability
        exact = score_items(model, prompt, setup.index, items)
        assert [s for _, s in ranked] == pytest.approx(exact.tolist(), abs=1e-4)
        assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_batched_users_match_one_at_a_time(tiny):
    setup, model, prompts, seen = tiny
    pad = setup.tokenizer.pad_token_id
    batched = constrained_topk(model, prompts, setup.index, k=5, num_beams=5, excluded=seen, pad_id=pad)
    single = [constrained_topk(model, [p], setup.index, k=5, num_beams=5, excluded=[s], pad_id=pad)[0]
              for p, s in zip(prompts, seen)]
    assert [[i for i, _ in r] for r in batched] == [[i for i, _ in r] for r in single]


def test_dead_branches_and_exhausted_catalog(tiny):
    """Excluding all but two items: exactly those two come back; excluding all: nothing."""
    setup, model, prompts, _ = tiny
    n = setup.index.num_items
    keep = {3, 17}
    out = constrained_topk(model, prompts[:1], setup.index, k=10, num_beams=4,
                           excluded=[set(range(n)) - keep], pad_id=setup.tokenizer.pad_token_id)[0]
    assert {i for i, _ in out} == keep
    out = constrained_topk(model, prompts[:1], setup.index, k=10, num_beams=4,
                           excluded=[set(range(n))], pad_id=setup.tokenizer.pad_token_id)[0]
    assert out == []


def test_length_penalty_normalises_by_sequence_length(tiny):
    setup, model, prompts, seen = tiny
    n = setup.index.num_items
    got = constrained_topk(model, prompts[:1], setup.index, k=5, num_beams=n, excluded=seen[:1],
                           length_penalty=1.0, pad_id=setup.tokenizer.pad_token_id)[0]
    ref = score_items(model, prompts[0], setup.index, length_penalty=1.0)
    ref[list(seen[0])] = float("-inf")
    assert [i for i, _ in got] == torch.topk(ref, 5).indices.tolist()


def test_shared_prefix_attention_matches_the_standard_cache(tiny):
    """One prompt K/V copy per user gives the same items and scores as a per-beam KV cache."""
    setup, model, prompts, seen = tiny
    pad = setup.tokenizer.pad_token_id
    shared = constrained_topk(model, prompts, setup.index, k=10, num_beams=10, excluded=seen, pad_id=pad,
                              shared_prefix=True)
    plain = constrained_topk(model, prompts, setup.index, k=10, num_beams=10, excluded=seen, pad_id=pad,
                             shared_prefix=False)
    assert [[i for i, _ in r] for r in shared] == [[i for i, _ in r] for r in plain]
    for a, b in zip(shared, plain):
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)


def test_plain_id_identifiers_decode_through_the_same_trie(tiny_model_dir, toy_data_dir):
    cfg = load_config(None, [f"data.path={toy_data_dir}", "data.dataset=toy", f"model.name_or_path={tiny_model_dir}",
                             "model.dtype=float32", "items.identifier=id", "prompt.template=prompts/next_item_id.yaml"])
    setup = prepare(cfg)
    tok = setup.tokenizer
    assert tok.decode(setup.index.sequences[0][:-1]) == setup.split.catalog[0].plain_id == "item_1"
    model = load_base_model(cfg.model, setup.model_path).eval()
    user = setup.split.eval_users[0]
    prompt = setup.encoder.prompt_ids(setup.split.example(user, "test", 5))
    assert "item_" in tok.decode(prompt)
    ranked = constrained_topk(model, [prompt], setup.index, k=10, num_beams=10, pad_id=tok.pad_token_id)[0]
    assert len({i for i, _ in ranked}) == 10


def _reference_beam_search(model, prompt, index, k, num_beams, excluded):
    """Plain-Python beam search on exact prefix scores: returns (top-k items, prefixes the beam pruned)."""
    allowed = [tuple(index.sequences[i]) for i in range(index.num_items) if i not in excluded]
    item_of = {seq: i for i, seq in enumerate(map(tuple, index.sequences))}
    beams, finished, pruned = [((), 0.0)], {}, set()
    while beams:
        candidates = []
        for prefix, score in beams:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([list(prompt) + list(prefix)])).logits[0, -1]
            logp = torch.log_softmax(logits.float(), -1)
            for tok in sorted({seq[len(prefix)] for seq in allowed if seq[: len(prefix)] == prefix and len(seq) > len(prefix)}):
                child, child_score = prefix + (tok,), score + logp[tok].item()
                if child in item_of:
                    finished[item_of[child]] = child_score
                else:
                    candidates.append((child, child_score))
        kth = sorted(finished.values(), reverse=True)[k - 1] if len(finished) >= k else float("-inf")
        candidates = sorted((c for c in candidates if c[1] > kth), key=lambda c: -c[1])
        pruned |= {prefix for prefix, _ in candidates[num_beams:]}
        beams = candidates[:num_beams]
    return sorted(finished, key=lambda i: -finished[i])[:k], pruned


def test_narrow_beam_differs_from_exhaustive_only_where_the_beam_pruned(tiny):
    """The issue's correctness rule: beam search may miss an exhaustive top-k item only when a prefix of
    that item fell out of the beam (or on exact ties). A slow step-by-step reference search records what it
    pruned; the fast path must return exactly its items, and every exhaustive top-k item missing from them
    must have a pruned prefix."""
    setup, model, prompts, seen = tiny
    k, beams = 6, 2
    explained = 0
    for prompt, excluded in zip(prompts, seen):
        fast = constrained_topk(model, [prompt], setup.index, k=k, num_beams=beams, excluded=[excluded],
                                pad_id=setup.tokenizer.pad_token_id)[0]
        items, pruned = _reference_beam_search(model, prompt, setup.index, k, max(beams, k), excluded)
        assert [i for i, _ in fast] == items
        exact = score_items(model, prompt, setup.index)
        exact[list(excluded)] = float("-inf")
        for missing in set(torch.topk(exact, k).indices.tolist()) - set(items):
            seq = tuple(setup.index.sequences[missing])
            assert any(seq[:d] in pruned for d in range(1, len(seq))), f"item {missing} lost without pruning"
            explained += 1
    assert explained > 0  # the case is exercised: narrow beams do lose some exhaustive top-k items here


def test_output_layer_runs_in_fp32_under_a_bf16_body(tiny_model_dir):
    """bf16 logits of large magnitude sit on a coarse grid; the fp32 head keeps log-probs close to fp32's."""
    from transformers import AutoModelForCausalLM

    from genrec.decoding.search import NextTokenLogProbs

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref.get_output_embeddings().weight.mul_(40.0)  # logits of magnitude ~10-30, as in real LMs
    low = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    low.load_state_dict(ref.state_dict())
    low = low.to(torch.bfloat16)
    ids = torch.tensor([[5, 9, 13, 40, 7, 22]])
    with torch.no_grad():
        exact = torch.log_softmax(ref(input_ids=ids).logits[:, -1], -1)
        bf16_head = torch.log_softmax(low(input_ids=ids).logits[:, -1].float(), -1)
        fp32_head, _ = NextTokenLogProbs(low)(input_ids=ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as recipes/evaluate.py decodes
            autocast_head, _ = NextTokenLogProbs(low)(input_ids=ids)
    assert fp32_head.dtype == autocast_head.dtype == torch.float32
    torch.testing.assert_close(autocast_head, fp32_head, rtol=0, atol=1e-5)  # autocast does not pull the head to bf16
    top = exact[0].topk(20).indices  # the tokens that decide rankings
    err_fp32 = (fp32_head[0, top] - exact[0, top]).abs().mean()
    err_bf16 = (bf16_head[0, top] - exact[0, top]).abs().mean()
    assert err_fp32 < err_bf16 / 2, (err_fp32, err_bf16)


def test_trie_normalized_scores_are_log_probabilities_over_the_catalog(tiny):
    """decode.trie_normalize: each step renormalised over the node's children, so the scores of all items
    are a distribution over the catalog (they sum to 1), and equal the per-step renormalised reference."""
    setup, model, prompts, _ = tiny
    index = setup.index
    prompt = prompts[0]
    n = index.num_items
    got = constrained_topk(model, [prompt], index, k=n, num_beams=n, pad_id=setup.tokenizer.pad_token_id,
                           trie_normalize=True)[0]
    assert len(got) == n
    total = torch.logsumexp(torch.tensor([s for _, s in got]), 0)
    assert float(total) == pytest.approx(0.0, abs=1e-4)
    # reference: walk each item's path, renormalising the full-vocabulary log-probs over the allowed tokens
    device_prompt = torch.tensor([prompt])
    with torch.no_grad():
        for item, score in got[:5]:
            seq = index.sequences[item]
            ids = torch.cat([device_prompt, torch.tensor([seq[:-1]])], 1) if len(seq) > 1 else device_prompt
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -len(seq):].float(), -1)
            ref = 0.0
            for step, tok in enumerate(seq):
                allowed = index.allowed_tokens(seq[:step])
                ref += float(logp[step, tok] - torch.logsumexp(logp[step, allowed], 0))
            assert score == pytest.approx(ref, abs=1e-3)
    # and differs from the plain full-vocabulary scores (the tiny model leaks mass off the trie)
    plain = dict(constrained_topk(model, [prompt], index, k=5, num_beams=n, pad_id=setup.tokenizer.pad_token_id)[0])
    assert all(plain[i] < dict(got)[i] for i in plain)
