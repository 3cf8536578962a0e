"""Added item tokens: atomic identifiers (one token per catalog item, ``<item_123>``) and the code
tokens of semantic identifiers (``<a_3>``, several per item; genrec.items.semantic_ids).

The tokens are added to the tokenizer before anything is encoded (``recommender.prepare``), so
every item is exactly one token id and the trie over them is one level deep. The model's
embedding matrix (and its output layer, tied or not) grows by one row per item; each new row
starts as the mean embedding of the item's text tokens (``items.atomic_init=title``), so a new
token begins near what its title already means to the model instead of at random. Only these
rows are trained — peft's ``trainable_token_indices`` — never the whole 49k-row matrix. A semantic
code token starts as the mean of those title embeddings over the items whose code contains it.

``items.atomic_init=sasrec`` starts each row from a collaborative model instead: the item's embedding in a
trained SASRec (``items.sasrec_checkpoint``), mapped into the LLM's space by a fixed seeded orthonormal
projection (which keeps every dot product between items, up to one scale) and scaled to the norm of the
model's own token rows. Items bought together then start close, which the item's text cannot tell
when it is only an id (Amazon Beauty).
"""

from __future__ import annotations

import torch

from genrec.data.catalog import Catalog
from genrec.errors import ConfigError, DataError


def atomic_names(catalog: Catalog) -> list[str]:
    return [item.identifier("atomic") for item in catalog.items]


def add_item_tokens(tokenizer, names: list[str]) -> list[int]:
    """Add these tokens (atomic item tokens, or semantic code tokens) to the tokenizer, idempotently, and
    return their ids in the same order."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing:
        # not special: they must survive decode(skip_special_tokens=True); not normalized: matched verbatim
        tokenizer.add_tokens([AddedToken(n, single_word=False, normalized=False, special=False) for n in missing])
    ids = tokenizer.convert_tokens_to_ids(names)
    for name, token_id in zip(names[:3], ids[:3]):
        encoded = tokenizer(name, add_special_tokens=False)["input_ids"]
        if encoded != [token_id]:
            raise DataError(f"item token {name!r} does not encode to one token (got {encoded}); "
                            "check items.id_format")
    return ids


INITS = ("title", "random", "sasrec")


def grow_embeddings(model, tokenizer, catalog: Catalog, token_ids: list[int], init: str, seed: int = 0,
                    members: list[list[int]] | None = None, item_vectors: torch.Tensor | None = None) -> None:
    """Resize the model to the tokenizer and set the new rows: mean of the item's text-token embeddings
    (``title``), N(0, std of the existing rows) (``random``), or ``item_vectors`` ([items, d], row i =
    catalog item i) projected into the model's space (``sasrec``, see ``projected_rows``). ``members[j]``:
    the catalog items token j stands for (its row is the mean of theirs); by default token j is item j
    (atomic ids). An output layer not tied to the input embedding gets its own rows the same way, from
    its own weights (the two matrices live in different spaces)."""
    if init not in INITS:
        raise ConfigError(f"items.atomic_init: expected one of {', '.join(INITS)}, got {init!r}")
    if init == "sasrec" and (item_vectors is None or len(item_vectors) != len(catalog)):
        raise DataError(f"items.atomic_init=sasrec needs one vector per catalog item ({len(catalog)}); got "
                        f"{None if item_vectors is None else len(item_vectors)}")
    old_rows = model.get_input_embeddings().weight.shape[0]
    if max(token_ids) >= len(tokenizer):
        raise DataError("item token ids lie outside the tokenizer; add_item_tokens must run first")
    model.resize_token_embeddings(max(len(tokenizer), old_rows), mean_resizing=False)
    embed = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    matrices = [embed]
    if output is not None and output.weight.data_ptr() != embed.data_ptr():
        matrices.append(output.weight)
    texts = tokenizer([item.text for item in catalog.items], add_special_tokens=False)["input_ids"] \
        if init == "title" else None
    index = torch.tensor(token_ids)
    with torch.no_grad():
        for n, matrix in enumerate(matrices):
            base = matrix[: min(old_rows, min(token_ids))].float()
            if init == "random":
                gen = torch.Generator().manual_seed(seed + n)
                rows = torch.randn(len(token_ids), base.shape[1], generator=gen) * base.std()
            else:  # one row per catalog item, then per token (the mean over the items it stands for)
                rows = projected_rows(item_vectors, base, seed) if init == "sasrec" else \
                    torch.stack([base[torch.tensor(ids)].mean(0) if ids else base.mean(0) for ids in texts])
                if members is not None:
                    rows = torch.stack([rows[torch.tensor(items)].mean(0) for items in members])
            matrix[index] = rows.to(matrix.dtype)


def projected_rows(vectors: torch.Tensor, base: torch.Tensor, seed: int) -> torch.Tensor:
    """[items, hidden]: ``vectors`` ([items, d], d <= hidden) times a seeded [d, hidden] matrix with orthonormal
    rows, so every dot product and distance between items is kept up to one scale, which makes the mean row
    norm equal the mean norm of the model's existing rows ``base``: the new rows are neither drowned by nor
    louder than the vocabulary they join."""
    vectors = vectors.float()
    d, hidden = vectors.shape[1], base.shape[1]
    if d > hidden:
        raise DataError(f"items.atomic_init=sasrec: item vectors of {d} dimensions do not fit the model's {hidden}")
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(hidden, d, generator=gen))  # [hidden, d], orthonormal columns
    rows = vectors @ q.T
    scale = base.norm(dim=1).mean() / rows.norm(dim=1).mean().clamp(min=1e-12)
    return rows * scale
