"""A tree of token sequences run as ONE row through the model, under a 4-D attention mask.

Each segment continues an earlier one (its parent, from some point on): its tokens see their ancestors'
tokens up to the branch points and their own earlier tokens, never a sibling's, and their positions go on
from the branch point. So many continuations of one prompt, or many prompts that share a long prefix,
read the shared part once and copy no keys or values — what a KV cache repeated per sequence would.
genrec.decoding.search.score_branches scores explanation lines this way; genrec.decoding.ensemble reads the item scores
of many histories that differ only near their end (faithful explanations) this way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Segment:
    start: int  # index of its first token in the packed row
    end: int
    first_position: int  # the position id of its first token
    sees: tuple[tuple[int, int], ...]  # the packed ranges before it that its tokens attend to

    def index(self, t: int) -> int:
        """The packed index of its t-th token (negative t counts from its end)."""
        return (self.end if t < 0 else self.start) + t


class PackedTree:
    def __init__(self):
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.segments: list[Segment] = []

    def add(self, ids: list[int], parent: Segment | None = None, at: int | None = None) -> Segment:
        """A segment of ``ids`` continuing ``parent`` after its first ``at`` tokens (default: all of them)."""
        if parent is None:
            sees, position = (), 0
        else:
            at = parent.end - parent.start if at is None else at
            sees = parent.sees + ((parent.start, parent.start + at),)
            position = parent.first_position + at
        segment = Segment(len(self.tokens), len(self.tokens) + len(ids), position, sees)
        self.tokens += ids
        self.positions += range(position, position + len(ids))
        self.segments.append(segment)
        return segment

    def inputs(self, model, device) -> dict:
        """input_ids, the 4-D mask (boolean for sdpa, additive for eager) and position_ids of the row."""
        n = len(self.tokens)
        visible = torch.zeros((n, n), dtype=torch.bool)
        for s in self.segments:
            visible[s.start:s.end, s.start:s.end] = torch.ones((s.end - s.start,) * 2, dtype=torch.bool).tril()
            for lo, hi in s.sees:
                visible[s.start:s.end, lo:hi] = True
        if model.config._attn_implementation == "eager":
            dtype = next(model.parameters()).dtype
            mask = torch.zeros((n, n), dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
        else:
            mask = visible
        return {"input_ids": torch.tensor([self.tokens], dtype=torch.long, device=device),
                "attention_mask": mask[None, None].to(device),
                "position_ids": torch.tensor([self.positions], dtype=torch.long, device=device), "use_cache": False}


def supports_packing(model) -> bool:
    """The 4-D mask needs sdpa or eager attention (flash attention takes none)."""
    return model.config._attn_implementation in ("sdpa", "eager")
