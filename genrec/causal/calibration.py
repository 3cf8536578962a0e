"""The temperature that calibrates a scorer on held-out targets, for ``decode.propensity_temperature``.

``decode.propensity_mix`` ranks by p(item | h) * (1 + beta * w(item)), which is the best ranking for its mixed
objective only when p is right. A product of experts (the LLM's log p plus SASRec's) is sharper than either,
so its softmax is over-confident. Reading p as softmax(score / T), the T that minimises the held-out targets'
negative log-likelihood is the standard fix (temperature scaling, Guo et al. 2017), and it leaves the plain
ranking unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from genrec.decoding.search import exclude_items_

GOLDEN = (math.sqrt(5) - 1) / 2


class TemperatureFit(NamedTuple):
    temperature: float  # T minimising the held-out NLL
    nll_at_one: float  # mean NLL of the targets at T = 1 (the scores as they are)
    nll: float  # mean NLL at the fitted T
    cases: int  # cases fitted on (those whose target could be recommended)


def masked_scores(scores: torch.Tensor, excluded: Sequence[set[int]] | None) -> torch.Tensor:
    """A float copy of [cases, items] ``scores`` with each case's excluded items (those it can never be
    recommended: its seen items under decode.exclude_seen) at -inf."""
    return exclude_items_(scores.float().clone(), excluded or ())


def target_nll(scores: torch.Tensor, targets: torch.Tensor, temperature: float, chunk: int = 4096) -> float:
    """Mean over cases of -log softmax(scores / T)[target]; ``scores`` as ``masked_scores`` returns them."""
    total = 0.0
    for start in range(0, len(scores), chunk):
        part = scores[start:start + chunk] / temperature
        picked = part.gather(1, targets[start:start + chunk, None]).squeeze(1)
        total += (torch.logsumexp(part, dim=1) - picked).double().sum().item()
    return total / len(scores)


def fit_temperature(scores: torch.Tensor, targets: Sequence[int], excluded: Sequence[set[int]] | None = None,
                    bounds: tuple[float, float] = (0.05, 20.0), tolerance: float = 1e-3) -> TemperatureFit:
    """The T in ``bounds`` minimising the mean NLL of ``targets`` under softmax(``scores`` / T), each case's
    softmax over the items it may be recommended (``excluded`` left out; a case whose target is excluded can
    never be right and is skipped).

    The NLL is convex in 1 / T (a log-partition minus a linear term), so it is unimodal in log T and a golden-
    section search on log T finds its minimum to ``tolerance`` (relative) in ~20 evaluations."""
    if not len(targets):
        raise ValueError("fit_temperature: no cases to fit on")
    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"fit_temperature: bounds must be 0 < low < high, got {bounds}")
    targets = torch.as_tensor(list(targets), dtype=torch.long)
    masked = masked_scores(scores, excluded)
    keep = torch.isfinite(masked.gather(1, targets[:, None]).squeeze(1))
    if not keep.any():
        raise ValueError("fit_temperature: every case's target is excluded")
    masked, targets = masked[keep], targets[keep]

    def nll(log_t: float) -> float:
        return target_nll(masked, targets, math.exp(log_t))

    low, high = math.log(bounds[0]), math.log(bounds[1])
    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    fa, fb = nll(a), nll(b)
    while high - low > tolerance:
        if fa <= fb:  # the minimum lies left of b
            high, b, fb = b, a, fa
            a = high - GOLDEN * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + GOLDEN * (high - low)
            fb = nll(b)
    temperature = math.exp((low + high) / 2)
    return TemperatureFit(temperature, target_nll(masked, targets, 1.0), target_nll(masked, targets, temperature),
                          len(targets))
